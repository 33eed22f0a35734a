"""The interactive explorer: one setting of the study at a time, read from the notebooks' cache or run into it.

    ex = Explorer()                  # the full profile; results in data/results/study-full/ (the notebooks' cache)
    ex.controls["bits"].value = 3    # any control (live: the view refreshes itself)
    ex.refresh()                     # success [Wilson 95%] and the trivial baselines, or the offer to run it
    ex.run()                         # an uncached setting, run into the same cache (tqdm progress)
    ex.show_episode()                # real frames of the executed plan beside FP's and the quantized imagination
    ex.widget                        # what a notebook displays

Which cache: every notebook calls ``setup(profile, ..., results_name="study")`` and ``run_study(settings,
S.results)``, so all of them share ``<cache_dir>/study-<profile>/<config_key>.json``. A choice of the controls is
built into a ``Setting`` through the same profile and episode samplers as the notebooks' (``Profile.setting``), so a
setting a notebook ran has the same key and is read, never recomputed (a key found in another sweep folder of
``cache_dir`` is read there: it names the same setting); a setting run here lands in the profile's folder.

Budget: open-loop CEM settings are traced, and iteration ``k - 1`` of a traced run IS the run with ``k`` iterations
(``study.at_opt_steps``), so budget ``k`` is read from the notebooks' long run (``trace_steps`` iterations) when
``k <= trace_steps`` and that run is cached, else from a run of exactly ``k`` iterations (run when missing).
MPC-CEM: ``k`` CEM iterations per round, the profile's rounds (success at the last round). GD: ``k`` updates.
Episodes: at the profile's ``n_evals`` (the control's default), a key comparison's run (``Profile.key_evals``
distinct episodes, e.g. FP or RTN W4) is read when cached, and shows its episode count.

Bad input in a control (a path that is not a checkpoint, a group size wider than every weight row, bits out of
range) shows the library's message (``BAD_INPUT`` errors are caught at this boundary only), never a traceback.
"""

from __future__ import annotations

import dataclasses
import html
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from wmqlib import study as st
from wmqlib.caches import CACHES, Caches
from wmqlib.envs import env_class
from wmqlib.models import available_checkpoints
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import parse_planning
from wmqlib.plots import frame_strip
from wmqlib.profiles import default_group_size, make_profile
from wmqlib.setting import SCOPES, Setting
from wmqlib.stats import success_curve, success_summary
from wmqlib.sweep import SweepError
from wmqlib.quant import recipe_types
from wmqlib.validate import InvalidValue, check_int

PLANNING = ("CEM", "MPC-CEM", "GD")  # planning names (wmqlib.plan.planning_name): open-loop CEM, in MPC, open-loop GD
ACT_BITS = ("none", 8, 6, 4)
W_GRANULARITIES = ("per-channel", "per-group", "per-tensor")
A_GRANULARITIES = ("per-tensor", "per-token")
NOTEBOOK_SAMPLERS: dict[str, str] = {}  # the episode samplers of notebooks 00-04's parameters cells
REPORT_COLUMNS = ("module", "w_bits", "w_granularity", "a_bits", "a_granularity", "effective_bits", "weight_mse",
                  "sqnr_db")
BAD_INPUT = (ValueError, TypeError, OSError, SweepError)  # CheckpointError and InvalidValue are ValueErrors


def _png(fig: Figure, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _set_image(image: widgets.Image, png: bytes) -> None:
    image.value = png
    image.layout.display = None if png else "none"  # an empty image would show as a broken one


def _shown(r: Mapping[str, float]) -> str:
    low, high = r["ci95"]
    return f"{r['successes']}/{r['episodes']} = {r['success_rate']:.0%} [{low:.0%}, {high:.0%}]"


class Explorer:
    """The explorer's widgets (``controls``, ``buttons``, ``message``, ``summary``, ``curve``, ``frames``, ``report``)
    and the methods that drive them: ``setting()``, ``refresh()``, ``run()``, ``show_episode()``.

    profile: a ``wmqlib.profiles.PROFILES`` name; sizes: its fields to replace (as a notebook's parameters cell does).
    cache_dir, results_name: results in ``<cache_dir>/<results_name>-<profile>/`` (the notebooks': data/results,
    "study"), calibrations in ``<cache_dir>/calibration``. device, seed, samplers: as the notebooks' cells.
    checkpoint: the model selected first (shipped name or path). live: refresh whenever a control changes.
    ``result`` (set by ``refresh()``, None on bad input): ``setting``, ``cached`` (the result file or None), per
    trivial baseline ``baselines[name]``; when cached ``success`` (each a ``stats.success_summary``), ``effective_bits`` and
    ``per_episode`` (the rows at the budget, ``study.per_episode``).
    """

    def __init__(self, profile: str = "full", cache_dir: str | Path = RESULTS_DIR, results_name: str = "study",
                 device: str = "auto", seed: int = 99, samplers: Mapping[str, str] | None = None,
                 checkpoint: str = "mini-wall", live: bool = True, **sizes: Any) -> None:
        self.profile = make_profile(profile, **sizes)
        if self.profile.threads is not None:  # as study.setup: results depend on the thread count
            torch.set_num_threads(self.profile.threads)
        self.cache_dir = Path(cache_dir)
        self.folder = self.cache_dir / f"{results_name}-{self.profile.name}"
        self.caches = CACHES if self.cache_dir == RESULTS_DIR else Caches(self.cache_dir / "calibration")
        self.device, self.seed = device, seed
        self.samplers = dict(NOTEBOOK_SAMPLERS if samplers is None else samplers)
        self.result: dict[str, Any] | None = None
        self._baselines: dict[tuple[Any, ...], dict[str, dict[str, float]]] = {}
        self._quiet = False
        env = self.caches.checkpoint(checkpoint).env
        dropdown, number = widgets.Dropdown, widgets.IntText
        self.controls: dict[str, widgets.ValueWidget] = {
            "model": widgets.Combobox(value=str(checkpoint), options=available_checkpoints(), ensure_option=False,
                                      description="model", placeholder="shipped name or checkpoint folder"),
            "method": dropdown(options=["FP", *sorted(recipe_types())], value="FP", description="method"),
            "bits": number(value=4, description="weight bits"),
            "granularity": dropdown(options=W_GRANULARITIES, description="weights"),
            "group_size": number(value=default_group_size(checkpoint), description="group size"),
            "act_bits": dropdown(options=ACT_BITS, value="none", description="activation bits"),
            "act_granularity": dropdown(options=A_GRANULARITIES, description="activations"),
            "scope": dropdown(options=SCOPES, description="scope"),
            "planner": dropdown(options=PLANNING, description="planner"),
            "budget": number(value=self.profile.steps(env), description="budget (iters)"),
            "n_evals": number(value=self.profile.n_evals, description="episodes (n)",
                              tooltip="evaluation episodes; fewer (smoke: 3) give a quick answer under its own key"),
            "episode": number(value=0, description="episode shown"),
        }
        for control in self.controls.values():
            control.style = {"description_width": "110px"}
            control.continuous_update = False
        self.buttons = {"run": widgets.Button(description="Run this setting", button_style="warning", icon="play"),
                        "episode": widgets.Button(description="Show episode", icon="film")}
        self.buttons["run"].on_click(lambda _: self.run())
        self.buttons["episode"].on_click(lambda _: self.show_episode())
        self.message, self.summary, self.report = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.progress = widgets.Output()  # the run's tqdm bar
        self.curve, self.frames = (widgets.Image(format="png", layout={"display": "none"}) for _ in range(2))
        if live:
            for name, control in self.controls.items():
                control.observe(lambda change, name=name: self._changed(name), names="value")
        self._sync()
        c = self.controls
        column = lambda *names: widgets.VBox([c[n] for n in names])  # noqa: E731
        self.widget = widgets.VBox([
            widgets.HBox([column("model", "method", "scope", "bits"),
                          column("granularity", "group_size", "act_bits", "act_granularity"),
                          column("planner", "budget", "n_evals", "episode")]),
            widgets.HBox([self.buttons["run"], self.buttons["episode"]]), self.message, self.summary, self.progress,
            self.curve, self.frames, self.report])

    # ----- the setting the controls mean -------------------------------------------------------------------------

    def _value(self, name: str) -> Any:
        return self.controls[name].value

    def _recipe(self) -> Any:
        method = self._value("method")
        if method == "FP":
            return None
        gran, group = self._value("granularity"), None
        if gran == "per-group":
            group = check_int("group size", self._value("group_size"), 1)
            model = st.prepare(self._base(self._value("model"), None, "all"), self.caches).fp
            widest = max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))
            if group > widest:
                raise InvalidValue(f"group size {group} is wider than every weight row of {self._value('model')!r} "
                                   f"(widest: {widest} columns), so it is per-channel: choose 'per-channel' or a "
                                   f"group size <= {widest}")
        a_bits = None if self._value("act_bits") == "none" else self._value("act_bits")
        return self.profile.recipe(method, self._value("bits"), gran, group, a_bits,
                                   None if a_bits is None else self._value("act_granularity"))

    def _base(self, checkpoint: str, recipe: Any, scope: str, **kwargs: Any) -> Setting:
        env = self.caches.checkpoint(checkpoint).env
        return self.profile.setting(checkpoint, env, self.device, self.seed, recipe=recipe, scope=scope,
                                    sampler=env_class(env).check_sampler(self.samplers.get(env)), **kwargs)

    def candidates(self) -> list[tuple[Setting, int | None]]:
        """The settings whose result answers the controls' choice, each with the budget to read it at (None: as
        run); the first cached one is shown, the last is the one ``run()`` runs (see the module docstring)."""
        recipe = self._recipe()
        return self._options(recipe, "all" if recipe is None else self._value("scope"))

    def _options(self, recipe: Any, scope: str) -> list[tuple[Setting, int | None]]:
        checkpoint = str(self._value("model")).strip()
        budget = check_int("budget", self._value("budget"), 1)
        n = check_int("episodes (n)", self._value("n_evals"), 1)
        check_int("episode shown", self._value("episode"), 0, n - 1, why=" (an index into the evaluation episodes)")
        planner, mpc = parse_planning(self._value("planner"))
        sized = lambda s: dataclasses.replace(s, planner=dataclasses.replace(s.planner, opt_steps=budget),  # noqa: E731
                                              n_evals=n)
        exact = sized(self._base(checkpoint, recipe, scope, planner=planner.name, mpc=mpc))
        if mpc or planner.name != "CEM":  # untraced: GD; MPC: read at its last round
            return [(exact, None)]
        long = dataclasses.replace(self._base(checkpoint, recipe, scope, long=True), n_evals=n)
        traced = [long] if budget <= self.profile.trace_steps else []
        if traced and n == self.profile.n_evals:
            traced.insert(0, self._base(checkpoint, recipe, scope, long=True, key=True))
        return [(s, budget) for s in traced] + [(exact, budget)]

    def _find(self, setting: Setting) -> Path | None:
        """The setting's result file: in the profile's folder, else in any other sweep folder of ``cache_dir`` (a
        key names one setting's result wherever it was run); None when no folder holds it."""
        name = f"{st.result_key(setting, self.caches)}.json"
        if (self.folder / name).is_file():
            return self.folder / name
        return next(iter(sorted(self.cache_dir.glob(f"*/{name}"))), None)

    def setting(self) -> Setting:
        """The setting shown: the first cached candidate, else the one ``run()`` would run."""
        return self._chosen()[0]

    def _chosen(self, options: list[tuple[Setting, int | None]] | None = None
                ) -> tuple[Setting, int | None, Path | None]:
        options = self.candidates() if options is None else options
        for setting, k in options:
            path = self._find(setting)
            if path is not None:
                return setting, k, path
        return options[-1][0], options[-1][1], None

    # ----- what is shown -------------------------------------------------------------------------------------------

    def refresh(self) -> dict[str, Any] | None:
        """Rebuild the setting from the controls and show what the cache holds for it (success with its Wilson 95%
        interval, trivial baselines, effective bits, the success and planning-loss curve, the per-layer report of a
        method without calibration), or the offer to run it. Returns ``result`` (None and a message on bad input)."""
        return self._guard(self._refresh)

    def _refresh(self) -> dict[str, Any]:
        self.report.value = ""
        _set_image(self.frames, b"")
        _set_image(self.curve, b"")
        setting, k, path = self._chosen()
        label = st.describe(setting)
        result: dict[str, Any] = {"setting": setting, "cached": path, "label": label["label"],
                                  "baselines": self._baseline_rates(setting)}
        base = ", ".join(f"{name} {_shown(r)}" for name, r in result["baselines"].items())
        title = f"<b>{html.escape(label['label'])}</b> · {label['planning']} budget {self._value('budget')}"
        if path is None:
            self.buttons["run"].layout.display = None
            self.summary.value = (f"{title}<br>not in the cache ({self.folder}); press <i>Run this setting</i> to "
                                  f"compute it there ({setting.n_evals} episodes).<br>trivial baselines: {base}")
        else:
            self.buttons["run"].layout.display = "none"
            table = self._read(setting, path)
            final = st.per_episode(table, k)
            result["success"] = success_summary(int(final["success"].sum()), len(final))
            result["effective_bits"] = float(final["effective_bits"].iloc[0])
            result["per_episode"] = final
            self.summary.value = (f"{title}<br><b>success {_shown(result['success'])}</b> (Wilson 95%) · "
                                  f"{result['effective_bits']:.2f} bits/weight<br>trivial baselines: {base}"
                                  f"<br><small>cached: {html.escape(str(path))}</small>")
            curves = {label["label"]: table}
            fp, _, fp_path = self._chosen(self._options(None, "all")) if setting.recipe is not None else (None,) * 3
            if fp_path is not None:  # FP's curve for reference
                curves["FP"] = self._read(fp, fp_path)
            _set_image(self.curve, self._curve(curves, k))
        recipe = setting.recipe
        if recipe is not None and not (recipe.needs_calibration or recipe.static_activations):
            self._show_report(setting)  # cheap without calibration; the others get it with the episode
        elif recipe is not None:
            self.report.value = (f"per-layer report: press <i>Show episode</i> ({type(recipe).__name__} needs its "
                                 f"calibration, FP planning on {setting.n_calib} episodes, cached once made)")
        self.message.value = ""
        self.result = result
        return result

    def _read(self, setting: Setting, path: Path) -> pd.DataFrame:
        # run_study finds the file by the same key and reads it (its checksum checked); nothing runs
        return st.run_study([setting], path.parent.name, cache_dir=path.parent.parent, progress=False,
                            caches=self.caches)

    def _baseline_rates(self, setting: Setting) -> dict[str, dict[str, float]]:
        key = (self.caches.checkpoint(setting.checkpoint).model_sha, setting.n_evals, setting.seed, setting.goal_H,
               setting.sampler, setting.planner.horizon, setting.mpc)  # what fixes the episodes and the env steps
        if key not in self._baselines:
            outcomes = st.baseline_outcomes(setting, self.caches)
            self._baselines[key] = {name: success_summary(int(s.sum()), len(s)) for name, s in outcomes.items()}
        return self._baselines[key]

    def _curve(self, tables: Mapping[str, pd.DataFrame], k: int | None) -> bytes:
        """Success (Wilson 95% band) and median planning loss per CEM iteration (traced runs) or MPC round, per
        label (the setting, and FP for reference when cached); empty bytes for untraced (GD) runs."""
        fig = Figure(figsize=(7.5, 2.4))
        left, right = fig.subplots(1, 2)
        for i, (label, table) in enumerate(tables.items()):
            if "round" in table.columns and table["round"].notna().any():
                step, x = "round", "round"
            elif "iteration" in table.columns and table["iteration"].notna().any():
                step, x = "iteration", "opt_steps"
            else:
                continue
            curve = success_curve(table.assign(label=label), "label", step=step)
            left.plot(curve[x], curve["success_rate"], marker="o", ms=3, color=f"C{i}", label=label)
            left.fill_between(curve[x], curve["ci_low"], curve["ci_high"], color=f"C{i}", alpha=0.2)
            right.plot(curve[x], curve["plan_loss"], marker="o", ms=3, color=f"C{i}", label=label)
            name = "MPC rounds" if step == "round" else "CEM iterations (open loop)"
            left.set(xlabel=name, ylabel="success (95% interval)", ylim=(0, 1))
            right.set(xlabel=name, ylabel="planning loss (median)", yscale="log")
        if not left.lines:
            return b""
        if k is not None:
            for ax in (left, right):
                ax.axvline(k, color="grey", ls=":")
        right.legend(fontsize=8)
        fig.tight_layout()
        return _png(fig)

    def _show_report(self, setting: Setting) -> None:
        report = st.prepare(setting, self.caches).report
        self.report.value = (f"<b>per-layer report</b>: {report.effective_bits:.2f} bits/weight overall" +
                             report.table[list(REPORT_COLUMNS)].to_html(index=False, border=0,
                                                                        float_format=lambda v: f"{v:.3g}"))

    def run(self) -> dict[str, Any] | None:
        """Run the shown setting into the cache (nothing when it is cached) with a progress bar, then refresh."""
        def go() -> bool:
            setting, _, path = self._chosen()
            if path is None:
                self.message.value = f"running {html.escape(st.describe(setting)['label'])} ..."
                with self.progress:
                    st.run_study([setting], self.folder.name, cache_dir=self.cache_dir, caches=self.caches)
            return True
        return None if self._guard(go) is None else self.refresh()

    def show_episode(self) -> dict[str, np.ndarray] | None:
        """For the episode shown, plan it with FP and (when quantized) with the quantized model (open loop: MPC's first
        round) and draw each executed plan's real frames beside the FP decoder's picture of that model's imagined
        rollout (``study.imagine``), and the goal; a quantized setting's per-layer report too. Returns the frames:
        ``"<FP|W4A16...>:real"`` uint8 and ``":imagined"`` float in [-1, 1], each (H + 1, img, img, 3), and
        ``"goal"`` (1, img, img, 3); None (and a message) on bad input."""
        return self._guard(self._show_episode)

    def _show_episode(self) -> dict[str, np.ndarray]:
        setting, k, _ = self._chosen()
        episode = self._value("episode")  # checked by candidates()
        if k is not None:  # a traced run read at budget k: plan with k iterations
            setting = dataclasses.replace(setting, planner=dataclasses.replace(setting.planner, opt_steps=k))
        rows, labels, frames = [], [], {}
        shown = {"FP": dataclasses.replace(setting, recipe=None, scope="all")}  # same planner and episodes
        if setting.recipe is not None:
            shown[st.describe(setting)["bits"]] = setting
        for name, s in shown.items():
            seen = st.imagine(s, episode, self.caches)
            rows += [seen["real"], seen["imagined"]]
            labels += [f"real ({name} plan)", f"imagined ({name})"]
            frames.update({f"{name}:real": seen["real"], f"{name}:imagined": seen["imagined"]})
            frames["goal"] = seen["goal"]
        rows.append(frames["goal"])
        labels.append("goal")
        title = f"episode {episode}: {st.describe(setting)['label']}, {st.describe(setting)['search']}"
        final = (self.result or {}).get("per_episode")
        outcome = None if final is None else final.loc[final["episode"] == episode, "success"]
        if outcome is not None and len(outcome) == 1:
            title += f" (success in the cached run: {'yes' if outcome.iloc[0] else 'no'})"
        _set_image(self.frames, _png(frame_strip(rows, labels, title)))
        if setting.recipe is not None:
            self._show_report(setting)
        return frames

    # ----- plumbing ------------------------------------------------------------------------------------------------

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn``; bad input shows its message instead of a traceback (None returned)."""
        try:
            return fn()
        except BAD_INPUT as err:
            self.result = None
            self.buttons["run"].layout.display = "none"
            self.message.value = f"<b style='color:#b00020'>{html.escape(str(err))}</b>"
            return None

    def _sync(self) -> None:
        """Disable the controls the choice ignores (FP: every quantization control)."""
        fp = self._value("method") == "FP"
        for name in ("bits", "granularity", "act_bits", "scope"):
            self.controls[name].disabled = fp
        self.controls["group_size"].disabled = fp or self._value("granularity") != "per-group"
        self.controls["act_granularity"].disabled = fp or self._value("act_bits") == "none"

    def _changed(self, name: str) -> None:
        if self._quiet:
            return
        self._sync()
        if name in ("model", "planner"):  # the new model's / planner's defaults, as a notebook would take them
            self._quiet = True
            try:
                self._guard(self._defaults)
            finally:
                self._quiet = False
        self.refresh()

    def _defaults(self) -> None:
        checkpoint = str(self._value("model")).strip()
        env = self.caches.checkpoint(checkpoint).env
        self.controls["group_size"].value = default_group_size(checkpoint)
        self.controls["budget"].value = (self.profile.gd_steps if self._value("planner") == "GD"
                                         else self.profile.steps(env))
