import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from wmqlib import plots


def _table():
    return pd.DataFrame({
        "bits": ["W8", "W4", "W8", "W4"], "granularity": ["channel", "channel", "g32", "g32"],
        "success_rate": [0.9, 0.5, 0.92, 0.62], "ci_low": [0.79, 0.37, 0.81, 0.48], "ci_high": [0.96, 0.63, 0.97, 0.74],
    })


def test_savefig_names_files_after_notebook_and_panel(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = plots.savefig(fig, "01_granularity", "w4-vs-w3", figures_dir=tmp_path)
    assert [p.name for p in paths] == ["01_granularity__w4-vs-w3.png", "01_granularity__w4-vs-w3.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_savefig_is_byte_identical_for_identical_figures(tmp_path):
    def draw(folder):
        fig, ax = plt.subplots()
        ax.plot(np.arange(5), np.arange(5) ** 2)
        return [p.read_bytes() for p in plots.savefig(fig, "00_baseline", "loss", figures_dir=folder)]

    assert draw(tmp_path / "a") == draw(tmp_path / "b")


@pytest.mark.parametrize("notebook,panel", [("granularity", "x"), ("01_Gran", "x"), ("01_g", "Bad Panel"), ("01_g", "")])
def test_savefig_rejects_bad_names(tmp_path, notebook, panel):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="notebook|panel"):
        plots.savefig(fig, notebook, panel, figures_dir=tmp_path)


def test_success_bars_draw_one_errorbar_per_bar():
    grid = plots.success_bars(_table(), x="bits", hue="granularity")
    ax = grid.ax
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == 4
    assert len(ax.containers) - 2 == 4  # two bar containers (one per hue) + one errorbar container per bar


def test_curves_with_band():
    t = pd.DataFrame({"iteration": np.tile(np.arange(5), 2), "method": np.repeat(["FP", "W4"], 5),
                      "success_rate": np.linspace(0, 1, 10)})
    t["ci_low"], t["ci_high"] = t.success_rate - 0.1, t.success_rate + 0.1
    grid = plots.curves(t, "iteration", "success_rate", hue="method", band=("ci_low", "ci_high"))
    assert len(grid.ax.collections) == 2  # one shaded band per line


def test_frame_strip_shapes_and_label_check():
    real = np.zeros((4, 8, 8, 3), np.uint8)
    imagined = np.zeros((3, 8, 8, 3), np.float32)
    fig = plots.frame_strip([real, imagined], ["real", "imagined"])
    assert len(fig.axes) == 8
    with pytest.raises(ValueError, match="labels"):
        plots.frame_strip([real], ["a", "b"])
