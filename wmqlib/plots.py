"""The study's shared seaborn style and figure helpers.

Every figure is written by :func:`savefig`, which names it ``figures/<notebook>__<panel>.png`` (and ``.pdf``), so each
file says which notebook produced it. Plot helpers take tidy tables whose success columns come from
``wmqlib.stats.success_rates`` / ``success_curve`` (``success_rate``, ``ci_low``, ``ci_high``). Every success figure
can carry the trivial baselines (grey lines) and FP with its interval (near-black line and band); bands take
their line's colour; y fits the data; long tick labels wrap.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from wmqlib.paths import FIGURES_DIR
from wmqlib.provenance import figure_provenance, sidecar
from wmqlib.validate import atomic_write

_NOTEBOOK = re.compile(r"^\d\d_[a-z0-9_]+$")
_PANEL = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SAVEFIG_CALL = re.compile(r"""savefig\(\s*[^,]+,\s*["'](\d\d_[a-z0-9_]+)["'],\s*["']([a-z0-9][a-z0-9_-]*)["']""")
FORMATS = ("png", "pdf")
PROVENANCE_KEY = "wmq-provenance"  # the PNG text key; the PDF Subject starts with it
FP_COLOUR = "0.1"
BAND_ALPHA = 0.18
BASELINE_STYLES = ("--", ":", "-.")  # one per trivial baseline kind, in sorted order of their names


def set_style() -> None:
    """Apply the study's seaborn theme (white grid, colour-blind palette, compact fonts)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 130, "savefig.bbox": "tight"})


def savefig_calls(source: str) -> list[tuple[str, str]]:
    """(notebook, panel) of every ``savefig(fig, "<notebook>", "<panel>", ...)`` call written in ``source`` (a
    notebook's code), in order: the figures a notebook writes, found without running it."""
    return SAVEFIG_CALL.findall(source)


def savefig(fig: plt.Figure, notebook: str, panel: str, figures_dir: Path | str = FIGURES_DIR,
            profile: str | None = None, results: str | None = None,
            sources: pd.DataFrame | Sequence[pd.DataFrame] = ()) -> list[Path]:
    """Write ``fig`` as ``<figures_dir>/<notebook>__<panel>.{png,pdf}`` with its provenance, and return the paths.

    ``notebook`` is the producing notebook's stem (``"01_granularity"``), ``panel`` a short lower-case name.
    Provenance (``wmqlib.provenance``): the notebook, the checkout's commit, ``profile`` (the study profile's name),
    ``results`` (the results cache folder) and the cache keys of ``sources`` (the tables the figure plots), in the
    PNG text chunk / PDF Subject "wmq-provenance" and in ``<notebook>__<panel>.json`` beside the figure. File
    metadata carries no timestamps, so re-running a notebook at one commit rewrites identical files for identical
    numbers.
    """
    if not _NOTEBOOK.match(notebook):
        raise ValueError(f"notebook must be a notebook stem like '01_granularity' (NN_lowercase), got {notebook!r}")
    if not _PANEL.match(panel):
        raise ValueError(f"panel must be lower-case letters, digits, '_' or '-', got {panel!r}")
    record = json.dumps(figure_provenance(notebook, panel, profile, results, sources), sort_keys=True)
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{notebook}__{panel}.{fmt}"
        metadata = ({"Software": None, PROVENANCE_KEY: record} if fmt == "png" else
                    {"CreationDate": None, "Producer": None, "Subject": f"{PROVENANCE_KEY} {record}"})
        fig.savefig(path, format=fmt, metadata=metadata)
        paths.append(path)
    atomic_write(sidecar(paths[0]), record + "\n")
    return paths


def palette_for(values: Sequence[Any]) -> dict[Any, Any]:
    """One colour per distinct value, in first-seen order, from the colour-blind palette; a value named "FP" is
    drawn near-black so full precision reads as the reference in every figure."""
    order = list(pd.unique(pd.Series(list(values))))
    others = [v for v in order if v != "FP"]
    colours = dict(zip(others, sns.color_palette("colorblind", n_colors=max(len(others), 1))))
    return {v: FP_COLOUR if v == "FP" else colours[v] for v in order}


def _col_order(table: pd.DataFrame, col: str | None) -> list[Any] | None:
    """Facets in sorted order of their values (e.g. envs "pusht", "wall"), so every figure puts them alike."""
    return sorted(pd.unique(table[col]), key=str) if col else None


def _facets(grid: sns.FacetGrid, col: str | None) -> list[tuple[Any, plt.Axes]]:
    return list(grid.axes_dict.items()) if col else [(None, grid.ax)]


def _facet_rows(frame: pd.DataFrame | None, col: str | None, key: Any) -> pd.DataFrame | None:
    """The rows of ``frame`` for facet ``key`` (all rows when the frame has no ``col`` column)."""
    if frame is None or key is None or col not in frame.columns:
        return frame
    return frame[frame[col] == key]


def _check_columns(name: str, frame: pd.DataFrame | None, columns: Sequence[str | None]) -> None:
    if frame is None:
        return
    missing = [c for c in columns if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"{name} needs columns {missing}; it has {list(frame.columns)}")


def _baseline_styles(baselines: pd.DataFrame | None) -> dict[str, str]:
    kinds = [] if baselines is None else sorted(baselines["baseline"].unique())
    return {kind: BASELINE_STYLES[i % len(BASELINE_STYLES)] for i, kind in enumerate(kinds)}


def _draw_references(ax: plt.Axes, baselines: pd.DataFrame | None, reference: pd.DataFrame | None,
                     styles: dict[str, str], legend: dict[str, Any]) -> list[float]:
    """Trivial baselines as grey lines (dash style ``styles[kind]``), the FP reference as a near-black line with
    its interval band; fills ``legend`` (label -> handle) and returns the heights drawn (for the y-limits)."""
    heights = []
    for row in (baselines.itertuples() if baselines is not None else []):
        style = styles[row.baseline]
        ax.axhline(row.success_rate, color="0.45", lw=1.2, ls=style, zorder=1)
        legend[f"baseline: {row.baseline}"] = Line2D([], [], color="0.45", lw=1.2, ls=style)
        heights.append(row.success_rate)
    for row in (reference.itertuples() if reference is not None else []):
        label = getattr(row, "label", "FP")
        ax.axhline(row.success_rate, color=FP_COLOUR, lw=1.4, zorder=2)
        ax.axhspan(row.ci_low, row.ci_high, color=FP_COLOUR, alpha=BAND_ALPHA, lw=0, zorder=0)
        legend[f"{label} (95% interval)"] = (Patch(color=FP_COLOUR, alpha=BAND_ALPHA, lw=0),
                                            Line2D([], [], color=FP_COLOUR, lw=1.4))
        heights += [row.success_rate, row.ci_high]
    return heights


def _fit_ylim(ax: plt.Axes, values: Sequence[float], lines: bool = False) -> None:
    """y from 0 to a little above the highest value drawn (rounded up to 0.05, at most 1.02), so data in the
    bottom fifth of the rate scale fill the panel instead of a sliver of it."""
    finite = [float(v) for v in values if np.isfinite(v)]
    top = min(1.02, max(0.05, np.ceil((max(finite, default=1.0) * 1.08 + 0.005) * 20) / 20))
    ax.set_ylim(-0.015 * top if lines else 0, top)  # lines at 0 stay visible above the axis


def _declutter_ticks(grid: sns.FacetGrid, width: int) -> None:
    """No overprinted categorical tick labels: the first layout of each facet's labels whose neighbours do not
    overlap, of: wrapped at ``width`` characters; wrapped at 60% of it; vertical, wrapped at twice it; vertical on
    one line (vertical labels need only their lines' height side by side; the saved bbox grows to hold them)."""
    axes = list(grid.axes.flat)
    texts = [[t.get_text() for t in ax.get_xticklabels()] for ax in axes]
    for ax, labels in zip(axes, texts):
        ax.set_xticks(ax.get_xticks(), [textwrap.fill(t, width, break_long_words=False) for t in labels])
    grid.tight_layout()  # the grid was laid out for the unwrapped labels
    renderer = grid.figure.canvas.get_renderer()

    def crowded(ax: plt.Axes) -> bool:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        return any(left.x1 >= right.x0 for left, right in zip(boxes, boxes[1:]))

    for ax, labels in zip(axes, texts):
        for wrap_at, rotation in ((max(4, round(0.6 * width)), 0), (2 * width, 90), (None, 90)):
            if not crowded(ax):
                break
            ax.set_xticks(ax.get_xticks(), labels if wrap_at is None else
                          [textwrap.fill(t, wrap_at, break_long_words=False) for t in labels], rotation=rotation,
                          ha="center")


def _legend(grid: sns.FacetGrid, title: str | None, entries: dict[str, Any]) -> None:
    if entries:
        grid.add_legend(legend_data=entries, title=title, label_order=list(entries))


def success_bars(table: pd.DataFrame, x: str, hue: str | None = None, col: str | None = None,
                 baselines: pd.DataFrame | None = None, title: str | None = None,
                 reference: pd.DataFrame | None = None, xlabel: str | None = None,
                 ylabel: str = "success rate (95% interval)", wrap: int = 12) -> sns.FacetGrid:
    """Bar chart of success rate with Wilson 95% error bars, one facet per ``col`` value, y fitted per facet; a slot
    whose setting has no row in a facet says "not run" (never an empty, 0%-looking slot).

    table: one row per bar - columns ``x``, ``hue``, ``col``, ``success_rate``, ``ci_low``, ``ci_high``.
    baselines: trivial baselines (columns ``col`` (optional), ``baseline``, ``success_rate``), drawn as grey lines,
        one dash style per kind, named in the legend.
    reference: FP (columns ``col`` (optional), ``success_rate``, ``ci_low``, ``ci_high``, optional ``label``),
        drawn as a near-black line with its interval band.
    xlabel / ylabel: axis names; wrap: tick labels wider than this many characters are wrapped.
    """
    _check_columns("table", table, [x, hue, col, "success_rate", "ci_low", "ci_high"])
    _check_columns("baselines", baselines, ["baseline", "success_rate"])
    _check_columns("reference", reference, ["success_rate", "ci_low", "ci_high"])
    table = table.reset_index(drop=True)  # seaborn mis-draws a facet of a table with a repeated index (pd.concat)
    colours = palette_for(table[hue]) if hue else {None: sns.color_palette("colorblind")[0]}
    order = list(pd.unique(table[x]))
    grid = sns.catplot(data=table, x=x, y="success_rate", hue=hue, col=col, col_order=_col_order(table, col),
                       kind="bar", errorbar=None,
                       order=order, hue_order=list(colours) if hue else None, palette=colours if hue else None,
                       color=None if hue else colours[None], saturation=1, height=3.2, aspect=1.3, sharex=False,
                       sharey=False, legend=False)
    legend = {str(k): Patch(color=c) for k, c in colours.items()} if hue else {}
    styles = _baseline_styles(baselines)
    for key, ax in _facets(grid, col):
        sub = _facet_rows(table, col, key)
        _errorbars(ax, sub, x, hue, order, colours)
        _mark_not_run(ax, sub, x, hue, order, list(colours) if hue else [None])
        heights = _draw_references(ax, _facet_rows(baselines, col, key), _facet_rows(reference, col, key),
                                   styles, legend)
        _fit_ylim(ax, [*sub["ci_high"], *heights])
    grid.set_axis_labels(xlabel or x, ylabel)
    _legend(grid, hue, legend)
    if title:
        grid.figure.suptitle(title, y=1.03)
    _declutter_ticks(grid, wrap)
    return grid


NOT_RUN = "not run"


def _mark_not_run(ax: plt.Axes, table: pd.DataFrame, x: str, hue: str | None, order: list[Any],
                  levels: list[Any]) -> None:
    """Write ``NOT_RUN`` (vertical, grey) in every bar slot of the facet that has no row, so a setting never run
    does not read as a 0% bar (a measured 0% keeps its error bar and has no label): one label per category when
    none of its hue levels ran, else one per missing level at seaborn's dodged position (width 0.8 split evenly)."""
    width = 0.8 / len(levels)
    for i, category in enumerate(order):
        rows = table[table[x] == category]
        ran = set(rows[hue]) if hue else ({None} if len(rows) else set())
        slots = [i] if not ran else [i - 0.4 + width * (j + 0.5) for j, level in enumerate(levels) if level not in ran]
        for pos in slots:
            ax.text(pos, 0, f" {NOT_RUN}", rotation=90, ha="center", va="bottom", fontsize=7, color="0.45",
                    transform=ax.get_xaxis_transform())


def _errorbars(ax: plt.Axes, table: pd.DataFrame, x: str, hue: str | None, order: list[Any],
               colours: dict[Any, Any]) -> None:
    """Wilson intervals on the bars of a seaborn bar plot: a bar's category is its centre rounded to the nearest
    tick, its hue level its face colour (each level has its own colour), so equal heights cannot be mixed up."""
    by_colour = {tuple(np.round(to_rgba(c)[:3], 3)): k for k, c in colours.items()}
    for patch in ax.patches:
        h = patch.get_height()
        if not np.isfinite(h) or patch.get_width() == 0:
            continue
        cx = patch.get_x() + patch.get_width() / 2
        rows = table[table[x] == order[int(round(cx))]]
        if hue:
            rows = rows[rows[hue] == by_colour.get(tuple(np.round(patch.get_facecolor()[:3], 3)))]
        if len(rows) != 1:
            continue
        row = rows.iloc[0]
        ax.errorbar(cx, h, yerr=[[h - row["ci_low"]], [row["ci_high"] - h]], fmt="none", ecolor="0.2", capsize=2,
                    lw=1)


def curves(table: pd.DataFrame, x: str, y: str, hue: str | None = None, col: str | None = None,
           band: tuple[str, str] | None = None, logy: bool = False, baselines: pd.DataFrame | None = None,
           reference: pd.DataFrame | None = None, xlabel: str | None = None, ylabel: str | None = None,
           title: str | None = None, marker: str | None = None, band_levels: Sequence[Any] | None = None
           ) -> sns.FacetGrid:
    """Line plot of ``y`` against ``x`` (success vs CEM iterations or MPC rounds, planning loss, ...).

    band: the (low, high) columns of the interval shaded around each line, in the line's own colour; band_levels:
        the hue levels whose band is shaded (None: every line's), so many overlapping bands can be left out.
    baselines / reference: as in ``success_bars`` (trivial baselines as grey lines; FP as a near-black line with
        its band when it is not one of the ``hue`` curves; a hue level named "FP" is drawn near-black too).
    xlabel: name the axis ("CEM iterations", "MPC rounds"); ylabel: default "success rate (95% interval)" for
        success_rate, else ``y``. Linear axes of non-negative data start at 0 and end a little above the highest
        value drawn. marker: a matplotlib marker drawn at every measured point (e.g. "o" where x takes a few
        values, such as bit widths, so the line is not read as measured between them).
    """
    _check_columns("table", table, [x, y, hue, col, *(band or ())])
    _check_columns("baselines", baselines, ["baseline", "success_rate"])
    _check_columns("reference", reference, ["success_rate", "ci_low", "ci_high"])
    table = table.reset_index(drop=True)  # seaborn mis-draws a facet of a table with a repeated index (pd.concat)
    colours = palette_for(table[hue]) if hue else {None: sns.color_palette("colorblind")[0]}
    grid = sns.relplot(data=table, x=x, y=y, hue=hue, col=col, col_order=_col_order(table, col), kind="line",
                       errorbar=None, height=3.2, aspect=1.3,
                       hue_order=list(colours) if hue else None, palette=colours if hue else None,
                       color=None if hue else colours[None], facet_kws={"sharey": False}, legend=False, marker=marker)
    legend = {str(k): Line2D([], [], color=c, lw=1.5) for k, c in colours.items()} if hue else {}
    styles = _baseline_styles(baselines)
    for key, ax in _facets(grid, col):
        sub = _facet_rows(table, col, key)
        drawn = list(sub[y])
        for name, g in (sub.groupby(hue, sort=False) if hue else [(None, sub)]):
            if band is not None and (band_levels is None or name in band_levels):
                g = g.sort_values(x)
                ax.fill_between(g[x], g[band[0]], g[band[1]], alpha=BAND_ALPHA, color=colours[name], lw=0)
                drawn += list(g[band[1]])
        drawn += _draw_references(ax, _facet_rows(baselines, col, key), _facet_rows(reference, col, key),
                                  styles, legend)
        if logy:
            ax.set_yscale("log")
        elif min(sub[y], default=0) >= 0 and max(drawn, default=0) <= 1:  # a rate: fit it
            _fit_ylim(ax, drawn, lines=True)
        elif min(sub[y], default=0) >= 0:  # a non-negative quantity: from 0, so a flat line looks flat
            ax.set_ylim(0, max(drawn, default=1) * 1.08)
    grid.set_axis_labels(xlabel or x, ylabel or ("success rate (95% interval)" if y == "success_rate" else y))
    _legend(grid, hue, legend)
    if title:
        grid.figure.suptitle(title, y=1.03)
    return grid


def frame_strip(rows: Sequence[np.ndarray], labels: Sequence[str], title: str | None = None,
                columns: Sequence[str] | None = None) -> plt.Figure:
    """Show image sequences as rows of a grid: each ``rows[i]`` is uint8 or float (T, H, W, 3) (floats in [-1, 1]);
    ``columns`` titles the columns (default "t=0", "t=1", ...)."""
    if len(rows) != len(labels):
        raise ValueError(f"labels must name every row: got {len(labels)} labels for {len(rows)} rows")
    t = max(len(r) for r in rows)
    columns = [f"t={c}" for c in range(t)] if columns is None else list(columns)
    if len(columns) != t:
        raise ValueError(f"columns must title every column: got {len(columns)} titles for {t} columns")
    fig, axes = plt.subplots(len(rows), t, figsize=(1.3 * t, 1.4 * len(rows)), squeeze=False)
    for r, (seq, label) in enumerate(zip(rows, labels)):
        for c in range(t):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(seq):
                img = seq[c]
                if img.dtype != np.uint8:
                    img = np.clip((np.asarray(img, dtype=np.float32) + 1) / 2, 0, 1)
                ax.imshow(img)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def layer_sensitivity(sensitivity: pd.DataFrame, envs: Sequence[str]) -> plt.Figure:
    """One panel per env: each quantized linear's sensitivity (``quant.mixed.layer_sensitivity``, log scale, floored
    at 1e-6) at each bit width with its 95% interval over the calibration episodes as a band, linears in model order
    (encoder, then predictor); panels in sorted env order, as in every other figure."""
    envs = sorted(envs)
    fig, axes = plt.subplots(1, len(envs), figsize=(6.5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        rows = sensitivity[sensitivity["env"] == env]
        order = list(rows.drop_duplicates("name")["name"])
        wide = {column: rows.pivot_table(index="name", columns="bits", values=column, aggfunc="first").loc[order]
                for column in ("sensitivity", "sensitivity_low", "sensitivity_high")}
        t = wide["sensitivity"]
        for b in t.columns:
            line, = ax.plot(range(len(t)), t[b].clip(lower=1e-6), marker="o", ms=3, lw=1, label=f"{b} bits")
            ax.fill_between(range(len(t)), wide["sensitivity_low"][b].clip(lower=1e-6),
                            wide["sensitivity_high"][b].clip(lower=1e-6), color=line.get_color(), alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_xticks(range(len(t)))
        ax.set_xticklabels([n.replace("transformer.layers.", "L").replace("blocks.", "B") for n in t.index],
                           rotation=90, fontsize=6)
        ax.set_xlabel("quantized linear (model order: encoder, then predictor)")
        ax.set_ylabel("objective change / FP spread")
        ax.set_title(env)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

