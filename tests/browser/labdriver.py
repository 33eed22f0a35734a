"""JupyterLab in a real, headless browser: the pieces the browser test and ``screenshot.py`` share.

- ``find_chromium``: the system Chromium (``$WMQ_CHROMIUM``, else ``chromium`` / ``chromium-headless-shell`` on PATH).
  Playwright drives it through ``executable_path``; nothing here downloads a browser.
- ``sandbox``: a throw-away copy of what the notebooks touch, so running them in the browser writes nothing into the
  repository. Layout (the server's root and the kernel's ``WMQ_HOME``)::

      <sandbox>/notebooks/*.ipynb        copies with outputs, execution counts and saved widget state removed
      <sandbox>/data/results/            a copy of the repository's results cache (cached settings load from it)
      <sandbox>/data/checkpoints         a symlink to the repository's shipped checkpoints (read only)
      <sandbox>/figures/                 where the notebooks' ``figures_dir = "../figures"`` lands

  The kernel runs with the notebook's folder as cwd, ``WMQ_HOME=<sandbox>`` (``wmqlib.paths`` resolves data/ there)
  and the repository first on ``PYTHONPATH`` (the wmqlib under test).
- ``lab_server``: ``<python> -m jupyter lab`` on 127.0.0.1, a free port and a random token, with its own
  config / data / runtime folders and one kernelspec, ``python3``, whose argv is this interpreter (the venv that runs
  pytest is the venv the notebooks run in). News and update checks are off; ``window.jupyterapp`` is exposed so the
  page's state (kernel status, cell outputs) is read from the app, not guessed from pixels.
- ``run_all``: open a notebook, click Run > Run All Cells, wait until every non-empty code cell has run (or one
  failed) and the kernel is idle; ``inspect`` then reports errors, widgets and images as the page shows them.
- ``set_control`` / ``click_button``: use an ipywidgets control by its label as a user does, and wait until the
  kernel has answered and stayed idle (``interact``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-headless-shell")
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
STDERR_MIME = "application/vnd.jupyter.stderr"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
KERNEL_NAME = "Python 3 (wmq test venv)"  # display name of the one kernelspec, python3 = the interpreter given

# Lab settings for a test run: every cell attached to the DOM (the default windowing detaches cells out of view),
# no news feed, no update check.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}

# The notebook panel whose document is at `path` (relative to the server root), or null.
_FIND = """
const find = (path) => {
  for (const w of window.jupyterapp.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
  }
  return null;
};
"""
_CODE_CELLS = "w.content.widgets.filter(c => c.model.type === 'code' && c.model.sharedModel.getSource().trim())"

# True once the kernel is idle, no cell waits ("[*]") and every non-empty code cell ran or one raised.
_FINISHED = f"""(path) => {{ {_FIND}
  const w = find(path);
  const kernel = w && w.sessionContext.session && w.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  const code = {_CODE_CELLS};
  if (code.some(c => (c.node.querySelector('.jp-InputArea-prompt') || {{}}).textContent.includes('*'))) return false;
  const failed = code.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
  return failed || code.every(c => c.model.executionCount !== null);
}}"""

# What the notebook model holds after the run: error outputs and code cells that never ran.
_OUTCOME = f"""(path) => {{ {_FIND}
  const w = find(path);
  const code = {_CODE_CELLS};
  const errors = [], unexecuted = [];
  w.content.widgets.forEach((c, i) => {{
    if (!code.includes(c)) return;
    if (c.model.executionCount === null) unexecuted.push(i);
    for (const o of c.model.outputs.toJSON()) {{
      if (o.output_type === 'error') errors.push(`cell ${{i}}: ${{o.ename}}: ${{o.evalue}}`);
    }}
  }});
  return {{errors, unexecuted, code_cells: code.length, kernel: w.sessionContext.kernelDisplayName}};
}}"""

# Count the kernel's idle status messages and note when the last status arrived, per notebook (see `interact`).
_WATCH = f"""(path) => {{ {_FIND}
  window.__wmqKernel = window.__wmqKernel || {{}};
  const seen = window.__wmqKernel[path] = {{idle: 0, last: Date.now()}};
  find(path).sessionContext.session.kernel.iopubMessage.connect((_, msg) => {{
    if (msg.header.msg_type !== 'status') return;
    seen.last = Date.now();
    if (msg.content.execution_state === 'idle') seen.idle += 1;
  }});
}}"""

# Per shown output image (a hidden one, display: none, has no client rects): loaded (naturalWidth > 0), and
# whether it sits inside a widget.
_IMAGES = """(root) => Array.from(root.querySelectorAll('.jp-OutputArea-output img'))
  .filter(img => img.getClientRects().length > 0).map(img => ({
  loaded: img.complete && img.naturalWidth > 0, in_widget: !!img.closest('.jupyter-widgets'),
  width: img.naturalWidth, height: img.naturalHeight}))"""


def find_chromium() -> str | None:
    """Path of the system Chromium: ``$WMQ_CHROMIUM`` when set, else the first of ``CHROMIUM_NAMES`` on PATH.

    Raises ValueError when ``$WMQ_CHROMIUM`` is set but is not an executable file (a typo should not read as
    "no browser")."""
    chosen = os.environ.get("WMQ_CHROMIUM")
    if chosen:
        path = shutil.which(chosen)
        if path is None:
            raise ValueError(f"WMQ_CHROMIUM={chosen!r}: not an executable file (set it to a Chromium binary or unset "
                             f"it to search PATH for {' / '.join(CHROMIUM_NAMES)})")
        return path
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def strip_notebook(source: Path, dest: Path) -> None:
    """Copy the notebook ``source`` to ``dest`` without outputs, execution counts or saved widget state, so that
    whatever the browser shows afterwards was produced by this run."""
    nb = json.loads(source.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    dest.write_text(json.dumps(nb, indent=1))


def sandbox(dest: Path, notebooks: list[str], repo: Path = REPO) -> Path:
    """Lay out ``dest`` as described in the module docstring with the named ``notebooks`` (file names in
    ``repo/notebooks``); returns ``dest``."""
    (dest / "notebooks").mkdir(parents=True)
    for name in notebooks:
        strip_notebook(repo / "notebooks" / name, dest / "notebooks" / name)
    (dest / "data").mkdir()
    if (repo / "data" / "results").is_dir():
        shutil.copytree(repo / "data" / "results", dest / "data" / "results",
                        ignore=shutil.ignore_patterns("*.tmp"))
    (dest / "data" / "checkpoints").symlink_to(repo / "data" / "checkpoints", target_is_directory=True)
    (dest / "figures").mkdir()
    return dest


def tree_state(repo: Path = REPO, parts: tuple[str, ...] = ("notebooks", "data", "figures"),
               generated: tuple[str, ...] = ("data/datasets",)) -> dict[str, tuple]:
    """(size, mtime_ns) of every file under ``repo/<part>``: compared before and after a run to show that the
    browser run wrote nothing into the repository. ``generated`` folders are left out: git ignores them and any
    test may fill them (``make test`` runs the unit tests on two workers, so another test can generate a training
    dataset there while a browser test runs)."""
    skip = tuple(repo / g for g in generated)
    state = {}
    for part in parts:
        for path in sorted((repo / part).rglob("*")):
            if path.is_file() and not any(path.is_relative_to(g) for g in skip):
                st = path.stat()
                state[str(path.relative_to(repo))] = (st.st_size, st.st_mtime_ns)
    return state


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server is started with port_retries=0, so a lost race fails
    loudly instead of moving to another port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A running JupyterLab: ``url`` (http://127.0.0.1:PORT), its ``token``, ``root`` (the server's root_dir),
    and ``log`` (its stdout + stderr)."""

    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    def page(self, notebook: str, mode: str = "lab") -> str:
        """URL opening ``notebook`` (relative to root) in the full UI (``mode="lab"``) or alone (``"doc"``)."""
        return f"{self.url}/{mode}/tree/{quote(notebook)}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET") -> object:
        """JSON answer of the server's REST API at ``path`` (e.g. "/api/kernelspecs")."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _write_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))


@contextlib.contextmanager
def lab_server(root: Path, state: Path, python: str = sys.executable, repo: Path = REPO,
               timeout: float = 120.0) -> Iterator[LabServer]:
    """Run JupyterLab serving ``root``, keeping its config, data, runtime and log under ``state``; the kernel is
    ``python`` with ``WMQ_HOME=root`` and ``repo`` first on PYTHONPATH. Shut down (kernels included) on exit.

    Raises RuntimeError with the server log's tail when it exits or does not answer within ``timeout`` seconds."""
    config, data, runtime, kernels = (state / n for n in ("config", "data", "runtime", "kernels"))
    for folder in (config, data, runtime):
        folder.mkdir(parents=True, exist_ok=True)
    _write_json(kernels / "kernels" / "python3" / "kernel.json",
                {"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                 "display_name": KERNEL_NAME, "language": "python"})
    for name, settings in LAB_SETTINGS.items():
        _write_json(config / "lab" / "user-settings" / name, settings)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(data), JUPYTER_RUNTIME_DIR=str(runtime),
               JUPYTER_PATH=str(kernels), IPYTHONDIR=str(state / "ipython"), WMQ_HOME=str(root),
               PYTHONPATH=os.pathsep.join([str(repo), os.environ["PYTHONPATH"]]) if os.environ.get("PYTHONPATH")
               else str(repo))
    for name in ("JUPYTER_TOKEN", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "JUPYTER_PREFER_ENV_PATH"):
        env.pop(name, None)
    port, token = free_port(), secrets.token_hex(16)
    command = [python, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.terminals_enabled=False", "--expose-app-in-browser", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--LanguageServerManager.autodetect=False"]
    if os.geteuid() == 0:  # CI containers run as root; the server refuses that unless told
        command.append("--allow-root")
    log = state / "jupyterlab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, log, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {process.returncode}:\n{server.log_tail()}")
            try:
                server.api("/api/status")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer on {server.url} within {timeout:.0f} s:\n"
                                       f"{server.log_tail()}") from None
                time.sleep(0.5)
        yield server
    finally:
        _stop(server)


def _stop(server: LabServer) -> None:
    """Ask the server to shut down (it stops its kernels), then terminate / kill its process group if it lingers."""
    if server.process.poll() is None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            server.api("/api/shutdown", method="POST")
        for sig, wait in ((None, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(wait)
                return


@dataclass
class Outcome:
    """What the page shows after ``run_all``: ``errors`` (error outputs, "cell i: Name: message"), ``tracebacks``
    (stderr outputs on the page that hold a traceback), ``unexecuted`` (indices of code cells that never ran),
    ``code_cells``, ``kernel`` (its display name), ``widgets`` (rendered ipywidgets elements), ``widget_errors``
    (widget outputs showing "Error displaying widget" or still "Loading widget..."), ``images`` (shown output
    images: loaded, in_widget, width, height)."""

    errors: list[str]
    tracebacks: list[str]
    unexecuted: list[int]
    code_cells: int
    kernel: str
    widgets: int
    widget_errors: list[str]
    images: list[dict]

    def problems(self) -> list[str]:
        """Every reason to call the run failed, as readable lines ([] when it is clean)."""
        found = [f"error output {e}" for e in self.errors]
        found += [f"traceback on the page: {t[:400]}" for t in self.tracebacks]
        found += [f"code cell {i} never ran" for i in self.unexecuted]
        found += [f"widget failed to render: {t[:200]}" for t in self.widget_errors]
        found += [f"image {i} did not load: {im}" for i, im in enumerate(self.images) if not im["loaded"]]
        return found


def open_notebook(page, server: LabServer, notebook: str, mode: str = "lab", timeout: float = 120.0) -> None:
    """Load ``notebook`` (path relative to the server root) and wait until its kernel is idle and it is active."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # imported here: the module loads without it

    page.goto(server.page(notebook, mode))
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=timeout * 1e3)
    page.evaluate("() => window.jupyterapp.restored")
    try:
        page.wait_for_function(f"""(path) => {{ {_FIND}
            const w = find(path);
            const kernel = w && w.context.isReady && w.sessionContext.session && w.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle'; }}""", arg=notebook, timeout=timeout * 1e3, polling=250)
    except PlaywrightTimeout:
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
        raise RuntimeError(f"{notebook}: no idle kernel after {timeout:.0f} s; dialogs on the page: {dialogs}; "
                           f"server log:\n{server.log_tail()}") from None
    page.evaluate(f"(path) => {{ {_FIND} window.jupyterapp.shell.activateById(find(path).id); }}", notebook)
    page.evaluate(_WATCH, notebook)


def run_all(page, notebook: str, timeout: float = 300.0) -> None:
    """Run every cell of the open ``notebook`` from the Run menu; return when it finished (see ``_FINISHED``)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    page.wait_for_function(_FINISHED, arg=notebook, timeout=timeout * 1e3, polling=500)
    settle(page)


def interact(page, notebook: str, action: Callable[[], None], timeout: float = 300.0, quiet_ms: int = 500) -> None:
    """Do ``action`` (a click or a change on a widget of ``notebook``: comm messages to the kernel), then wait until
    the kernel has answered (a new idle status), stayed idle ``quiet_ms`` and the page settled."""
    before = page.evaluate("(path) => window.__wmqKernel[path].idle", notebook)
    action()
    page.wait_for_function(f"""([path, before, quiet]) => {{ {_FIND}
        const seen = window.__wmqKernel[path], kernel = find(path).sessionContext.session.kernel;
        return seen.idle > before && kernel.status === 'idle' && Date.now() - seen.last > quiet; }}""",
                           arg=[notebook, before, quiet_ms], timeout=timeout * 1e3, polling=100)
    settle(page)


def control(page, label: str):
    """The Playwright locator of the ipywidgets control described ``label`` in the visible notebook."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-inline-hbox").filter(
        has=page.locator("label.widget-label", has_text=re.compile(f"^{re.escape(label)}$")))


def set_control(page, notebook: str, label: str, value: str) -> None:
    """Set the control described ``label`` to ``value`` as a user does (choose the option; or type and press Enter)
    and wait for the kernel's answer (``interact``). Raises ValueError when no single control has that label."""
    box = control(page, label)
    if box.count() != 1:
        raise ValueError(f"{box.count()} controls described {label!r} on the page (need exactly one)")

    def change() -> None:
        if box.locator("select").count():
            box.locator("select").select_option(label=value)
        else:
            box.locator("input").fill(value)
            box.locator("input").press("Enter")
    interact(page, notebook, change)


def click_button(page, notebook: str, text: str) -> None:
    """Click the ipywidgets button showing ``text`` and wait for the kernel's answer (``interact``)."""
    button = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) button.jupyter-button", has_text=text)
    interact(page, notebook, button.click)


def settle(page, timeout: float = 30.0) -> None:
    """Wait (at most ``timeout`` seconds, then go on: ``inspect`` reports what is missing) until every widget output
    has rendered its view and every shown output image has loaded; the kernel being idle does not mean the page is."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(f"""() => {{
            const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
            const views = panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="{WIDGET_MIME}"]');
            const images = Array.from(panel.querySelectorAll('.jp-OutputArea-output img'))
                .filter(img => img.getClientRects().length > 0);
            return Array.from(views).every(v => !v.textContent.includes('Loading widget...'))
                && images.every(img => img.complete && img.naturalWidth > 0); }}""",
                               timeout=timeout * 1e3, polling=250)


def inspect(page, notebook: str) -> Outcome:
    """Read the outcome of a run of ``notebook`` from its model and from what its panel shows."""
    model = page.evaluate(_OUTCOME, notebook)
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    stderr = panel.locator(f'.jp-OutputArea-output[data-mime-type="{STDERR_MIME}"]').all_inner_texts()
    views = panel.locator(f'.jp-OutputArea-output[data-mime-type="{WIDGET_MIME}"]')
    failed = [t for t in views.all_inner_texts() if "Error displaying widget" in t or "Loading widget..." in t]
    return Outcome(errors=model["errors"], tracebacks=[t for t in stderr if "Traceback" in t],
                   unexecuted=model["unexecuted"], code_cells=model["code_cells"], kernel=model["kernel"],
                   widgets=panel.locator(".jp-OutputArea-output .jupyter-widgets").count(), widget_errors=failed,
                   images=panel.evaluate(_IMAGES))


def show_whole_notebook(page, width: int = 1280, limit: int = 12000) -> None:
    """Make the viewport tall enough for the active notebook's whole content (at most ``limit`` pixels), so a
    screenshot shows every cell instead of the scrolled window."""
    scroller = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer")
    extra = page.viewport_size["height"] - scroller.evaluate("e => e.clientHeight")  # menus, toolbar, status bar
    height = scroller.evaluate("e => e.scrollHeight") + extra
    page.set_viewport_size({"width": width, "height": min(limit, int(height))})
    scroller.evaluate("e => { e.scrollTop = 0; }")
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")  # repainted


def shutdown_kernel(page, notebook: str) -> None:
    """Stop the kernel of ``notebook`` (frees its memory before the next notebook starts)."""
    page.evaluate(f"(path) => {{ {_FIND} return find(path).sessionContext.shutdown(); }}", notebook)
