"""The study's shared seaborn style and figure helpers.

Every figure is written by :func:`savefig`, which names it ``figures/<notebook>__<panel>.png`` (and ``.pdf``), so each
file says which notebook produced it. Plot helpers take tidy tables whose success columns come from
``wmqlib.study.with_success_ci`` (``success_rate``, ``ci_low``, ``ci_high``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from wmqlib.paths import FIGURES_DIR

_NOTEBOOK = re.compile(r"^\d\d_[a-z0-9_]+$")
_PANEL = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
FORMATS = ("png", "pdf")


def set_style() -> None:
    """Apply the study's seaborn theme (white grid, colour-blind palette, compact fonts)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 130, "savefig.bbox": "tight"})


def savefig(fig: plt.Figure, notebook: str, panel: str, figures_dir: Path | str = FIGURES_DIR) -> list[Path]:
    """Write ``fig`` as ``<figures_dir>/<notebook>__<panel>.{png,pdf}`` and return the paths.

    ``notebook`` is the producing notebook's stem (``"01_granularity"``), ``panel`` a short lower-case name.
    File metadata carries no timestamps, so re-running a notebook rewrites identical files for identical numbers.
    """
    if not _NOTEBOOK.match(notebook):
        raise ValueError(f"notebook must be a notebook stem like '01_granularity' (NN_lowercase), got {notebook!r}")
    if not _PANEL.match(panel):
        raise ValueError(f"panel must be lower-case letters, digits, '_' or '-', got {panel!r}")
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{notebook}__{panel}.{fmt}"
        metadata = {"Software": None} if fmt == "png" else {"CreationDate": None, "Producer": None}
        fig.savefig(path, format=fmt, metadata=metadata)
        paths.append(path)
    return paths


def success_bars(table: pd.DataFrame, x: str, hue: str | None = None, col: str | None = None,
                 baselines: pd.DataFrame | None = None, title: str | None = None) -> sns.FacetGrid:
    """Bar chart of success rate with Wilson 95% error bars, one facet per ``col`` value.

    ``table`` has one row per bar: columns ``x``, ``hue``, ``col``, ``success_rate``, ``ci_low``, ``ci_high``.
    ``baselines`` (columns ``col`` (optional), ``baseline``, ``success_rate``) are drawn as labelled dashed lines.
    """
    grid = sns.catplot(data=table, x=x, y="success_rate", hue=hue, col=col, kind="bar", errorbar=None,
                       height=3.2, aspect=1.3, sharex=False)
    for key, ax in grid.axes_dict.items() if col else [(None, grid.ax)]:
        sub = table if key is None else table[table[col] == key]
        _errorbars(ax, sub, x, hue)
        if baselines is not None:
            base = baselines if key is None or col not in baselines else baselines[baselines[col] == key]
            for i, row in enumerate(base.itertuples()):
                ax.axhline(row.success_rate, ls="--", lw=1, color=f"C{7 + i % 3}")
                ax.text(ax.get_xlim()[1], row.success_rate, f" {row.baseline}", va="center", fontsize=7)
        ax.set_ylim(0, 1.02)
    grid.set_axis_labels(x, "success rate")
    if title:
        grid.figure.suptitle(title, y=1.03)
    return grid


def _errorbars(ax: plt.Axes, table: pd.DataFrame, x: str, hue: str | None) -> None:
    """Draw Wilson intervals on the bars of a seaborn bar plot, matched by bar centre and height."""
    rates = table["success_rate"].to_numpy()
    lows, highs = table["ci_low"].to_numpy(), table["ci_high"].to_numpy()
    for patch in ax.patches:
        h = patch.get_height()
        if not np.isfinite(h) or patch.get_width() == 0:
            continue
        match = np.flatnonzero(np.isclose(rates, h))
        if match.size == 0:
            continue
        i = match[0]
        cx = patch.get_x() + patch.get_width() / 2
        ax.errorbar(cx, h, yerr=[[h - lows[i]], [highs[i] - h]], fmt="none", ecolor="0.2", capsize=2, lw=1)


def curves(table: pd.DataFrame, x: str, y: str, hue: str | None = None, col: str | None = None,
           band: tuple[str, str] | None = None, logy: bool = False) -> sns.FacetGrid:
    """Line plot of ``y`` against ``x`` (e.g. success vs planning iteration), with an optional shaded interval.

    ``band`` names the (low, high) columns of the interval drawn around each line.
    """
    grid = sns.relplot(data=table, x=x, y=y, hue=hue, col=col, kind="line", errorbar=None, height=3.2,
                       aspect=1.3, facet_kws={"sharey": False})
    if band is not None:
        for key, ax in grid.axes_dict.items() if col else [(None, grid.ax)]:
            sub = table if key is None else table[table[col] == key]
            groups = sub.groupby(hue, sort=False) if hue else [(None, sub)]
            palette = dict(zip(grid.hue_names or [None], sns.color_palette(n_colors=len(grid.hue_names or [0]))))
            for name, g in groups:
                g = g.sort_values(x)
                ax.fill_between(g[x], g[band[0]], g[band[1]], alpha=0.15, color=palette.get(name, "C0"), lw=0)
    if logy:
        grid.set(yscale="log")
    return grid


def frame_strip(rows: Sequence[np.ndarray], labels: Sequence[str], title: str | None = None) -> plt.Figure:
    """Show image sequences as rows of a grid: each ``rows[i]`` is uint8 or float (T, H, W, 3) (floats in [-1, 1])."""
    if len(rows) != len(labels):
        raise ValueError(f"labels must name every row: got {len(labels)} labels for {len(rows)} rows")
    t = max(len(r) for r in rows)
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
                ax.set_title(f"t={c}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
