import matplotlib

matplotlib.use("Agg")

import json
import subprocess

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import PngImagePlugin

from wmqlib import plots
from wmqlib.paths import REPO_ROOT
from wmqlib.provenance import describe, read_provenance


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
    assert (tmp_path / "01_granularity__w4-vs-w3.json").is_file()  # the provenance sidecar


def test_savefig_writes_the_provenance_into_both_files_and_the_sidecar(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    runs = pd.DataFrame({"config_key": ["b2", "a1", "b2", None], "success": [1, 0, 1, 1]})
    live = pd.DataFrame({"success_rate": [0.5]})  # computed live: no cache key
    png, pdf = plots.savefig(fig, "02_encoder_vs_predictor", "probe", figures_dir=tmp_path, profile="smoke",
                             results="study-smoke", sources=[runs, live])
    record = read_provenance(png)
    assert record["notebook"] == "02_encoder_vs_predictor" and record["panel"] == "probe"
    assert record["profile"] == "smoke" and record["results"] == "study-smoke"
    assert record["cache_keys"] == ["a1", "b2"]
    assert record["commit"] is None or len(record["commit"]) == 40
    assert json.loads(PngImagePlugin.PngImageFile(png).text[plots.PROVENANCE_KEY]) == record
    raw = pdf.read_bytes()  # the Subject string of the PDF info dictionary (parentheses escaped)
    subject = raw[raw.index(b"/Subject (") + 10:].split(b") /")[0].split(b")\n")[0]
    text = subject.replace(b"\\(", b"(").replace(b"\\)", b")").decode()
    assert text.startswith(plots.PROVENANCE_KEY + " ") and json.loads(text[len(plots.PROVENANCE_KEY) + 1:]) == record


def test_provenance_names_the_checkouts_commit(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    fig, _ = plt.subplots()
    png, _ = plots.savefig(fig, "00_baseline", "loss", figures_dir=tmp_path)
    assert read_provenance(png)["commit"] == head.stdout.strip()
    assert read_provenance(png)["library_modified"] in (True, False)


def test_provenance_reads_for_people():
    record = {"notebook": "01_granularity", "panel": "x", "commit": "0123456789abcdef", "library_modified": True,
              "profile": "full", "results": "study-full", "cache_keys": ["k1", "k2", "k3", "k4", "k5"]}
    assert describe(record) == ("01_granularity.ipynb, commit 0123456789 + modified library, profile full, results "
                                "study-full: 5 cached results (k1, k2, k3 and 2 more)")
    assert describe({**record, "commit": None, "cache_keys": []}).endswith("0 cached results (computed live)")
    assert "no git commit" in describe({**record, "commit": None})


def test_sources_must_be_tables(tmp_path):
    fig, _ = plt.subplots()
    with pytest.raises(TypeError, match=r"sources\[0\] must be a pandas DataFrame"):
        plots.savefig(fig, "00_baseline", "loss", figures_dir=tmp_path, sources=[[1, 2]])


def test_a_sidecar_without_every_field_is_refused(tmp_path):
    (tmp_path / "00_baseline__x.json").write_text(json.dumps({"notebook": "00_baseline"}))
    with pytest.raises(ValueError, match="provenance lacks"):
        read_provenance(tmp_path / "00_baseline__x.png")
    assert read_provenance(tmp_path / "00_baseline__y.png") is None


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


def _curve_table():
    t = pd.DataFrame({"round": np.tile(np.arange(1, 6), 3), "setting": np.repeat(["FP", "W4", "W3"], 5),
                      "success_rate": np.r_[np.linspace(0.05, 0.2, 5), np.linspace(0, 0.1, 5), np.zeros(5)]})
    t["ci_low"], t["ci_high"] = (t.success_rate - 0.05).clip(0), t.success_rate + 0.08
    return t


def test_curves_bands_take_their_line_colours():
    grid = plots.curves(_curve_table(), "round", "success_rate", hue="setting", band=("ci_low", "ci_high"),
                        xlabel="MPC rounds")
    ax = grid.ax
    lines = {tuple(np.round(to_rgba(line.get_color()), 3)) for line in ax.lines if len(line.get_xdata()) == 5}
    bands = [tuple(np.round(c.get_facecolor()[0][:3], 3)) + (1.0,) for c in ax.collections]
    assert len(bands) == 3 and len(set(bands)) == 3  # one band per line, each its own colour
    assert set(bands) == lines
    assert to_rgba(plots.FP_COLOUR) in {to_rgba(line.get_color()) for line in ax.lines}  # FP drawn near-black
    assert ax.get_xlabel() == "MPC rounds" and ax.get_ylabel() == "success rate (95% interval)"


def test_curves_shade_only_the_bands_asked_for():
    grid = plots.curves(_curve_table(), "round", "success_rate", hue="setting", band=("ci_low", "ci_high"),
                        band_levels=["FP"])
    bands = [to_rgba(c.get_facecolor()[0][:3]) for c in grid.ax.collections]
    assert bands == [to_rgba(plots.FP_COLOUR)]  # FP's band alone; W4 and W3 stay lines


def test_curves_fit_the_y_axis_to_low_rates_and_leave_other_values_alone():
    grid = plots.curves(_curve_table(), "round", "success_rate", hue="setting", band=("ci_low", "ci_high"))
    low, high = grid.ax.get_ylim()
    assert high == pytest.approx(0.35) and -0.01 < low < 0  # highest band 0.28: +8%, rounded up to 0.05
    loss = _curve_table().assign(plan_loss=lambda d: 10 + d["round"] * 5.0)
    assert plots.curves(loss, "round", "plan_loss", hue="setting").ax.get_ylim()[1] > 30


def test_baselines_and_fp_reference_drawn_in_every_facet_with_a_legend():
    table = pd.concat([_table().assign(env=env) for env in ("wall", "pusht")], ignore_index=True)
    base = pd.DataFrame({"env": ["wall", "wall", "pusht", "pusht"], "baseline": ["no_action", "straight_line"] * 2,
                         "success_rate": [0.0, 0.26, 0.0, 0.02]})
    fp = pd.DataFrame({"env": ["wall", "pusht"], "success_rate": [0.66, 0.16], "ci_low": [0.52, 0.08],
                       "ci_high": [0.78, 0.29]})
    grid = plots.success_bars(table, x="bits", hue="granularity", col="env", baselines=base, reference=fp)
    for env, ax in grid.axes_dict.items():
        heights = sorted(round(line.get_ydata()[0], 3) for line in ax.lines if len(set(line.get_ydata())) == 1
                         and len(line.get_ydata()) == 2)
        want = base[base["env"] == env]["success_rate"].tolist() + fp[fp["env"] == env]["success_rate"].tolist()
        assert heights == sorted(want)
        spans = [p for p in ax.patches if p.get_width() > 0.9]  # the FP band spans the whole axis
        assert len(spans) == 1
    labels = [t.get_text() for t in grid.legend.get_texts()]
    assert labels == ["channel", "g32", "baseline: no_action", "baseline: straight_line", "FP (95% interval)"]
    curves = plots.curves(_curve_table().assign(env="wall"), "round", "success_rate", col="env",
                          baselines=base, reference=fp)
    assert len(curves.axes_dict["wall"].lines) == 1 + 2 + 1


def test_errorbars_follow_their_bar_even_at_equal_heights():
    t = pd.DataFrame({"bits": ["W4", "W4"], "granularity": ["channel", "g32"], "success_rate": [0.5, 0.5],
                      "ci_low": [0.3, 0.45], "ci_high": [0.7, 0.55]})
    ax = plots.success_bars(t, x="bits", hue="granularity").ax
    bars = sorted((p.get_x(), p.get_height()) for p in ax.patches if p.get_height() > 0)
    spans = sorted((c.lines[2][0].get_segments()[0][0][0], c.lines[2][0].get_segments()[0][1][1] -
                    c.lines[2][0].get_segments()[0][0][1]) for c in ax.containers if hasattr(c, "has_yerr"))
    assert len(bars) == 2 and [round(s, 2) for _, s in spans] == [0.4, 0.1]  # channel left and wide, g32 narrow


def test_long_tick_labels_do_not_overlap():
    names = [f"Method{i} W4A16 per-channel (QuantWM reference)" for i in range(8)]
    t = pd.DataFrame({"setting": names, "success_rate": 0.1, "ci_low": 0.05, "ci_high": 0.2})
    grid = plots.success_bars(t, x="setting")
    renderer = grid.figure.canvas.get_renderer()
    boxes = sorted((lab.get_window_extent(renderer) for lab in grid.ax.get_xticklabels()), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    assert grid.ax.get_ylim()[1] == pytest.approx(0.25)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="ci_high"):
        plots.success_bars(_table().drop(columns="ci_high"), x="bits")
    with pytest.raises(ValueError, match="baseline"):
        plots.curves(_curve_table(), "round", "success_rate", baselines=pd.DataFrame({"success_rate": [0.1]}))


def test_frame_strip_shapes_and_label_check():
    real = np.zeros((4, 8, 8, 3), np.uint8)
    imagined = np.zeros((3, 8, 8, 3), np.float32)
    fig = plots.frame_strip([real, imagined], ["real", "imagined"])
    assert len(fig.axes) == 8
    with pytest.raises(ValueError, match="labels"):
        plots.frame_strip([real], ["a", "b"])


def test_curves_of_a_nonnegative_quantity_start_at_zero():
    table = pd.DataFrame({"bits": [3, 4, 8, 32] * 2, "error": [4.29, 4.35, 4.35, 4.35, 0.06, 0.06, 0.06, 0.06],
                          "env": ["pusht"] * 4 + ["wall"] * 4})
    grid = plots.curves(table, x="bits", y="error", col="env")
    for ax in grid.axes.flat:
        low, high = ax.get_ylim()
        assert -0.02 <= low <= 0 and high > 0  # rates keep a sliver below 0 so lines at 0 show
    plt.close(grid.figure)


def test_layer_sensitivity_draws_one_line_and_band_per_bit_width_in_model_order():
    names = ["encoder.blocks.0.attn.qkv", "predictor.transformer.layers.0.0.to_qkv"]
    table = pd.DataFrame([{"env": env, "name": n, "bits": b, "sensitivity": s, "sensitivity_low": s / 2,
                           "sensitivity_high": s * 3}
                          for env in ("wall", "pusht") for n in names for b, s in ((2, 1.0), (4, 0.0))])
    fig = plots.layer_sensitivity(table, ["wall", "pusht"])
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["pusht", "wall"] and len(axes[0].lines) == 2  # sorted envs
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["encoder.B0.attn.qkv", "predictor.L0.0.to_qkv"]
    assert axes[0].lines[1].get_ydata().min() == 1e-6  # zero sensitivity drawn at the log axis' floor
    band = axes[0].collections[0].get_paths()[0].vertices[:, 1]  # 2 bits: from 0.5 up to 3.0 at every linear
    assert band.min() == pytest.approx(0.5) and band.max() == pytest.approx(3.0) and len(axes[0].collections) == 2
    plt.close(fig)


def test_slots_never_run_say_so_and_a_measured_zero_does_not():
    table = pd.DataFrame({
        "env": ["a", "a", "a", "b", "b"], "bits": ["W8", "W8", "W4", "W8", "W8"],
        "weights": ["ch", "g", "ch", "ch", "g"], "success_rate": [0.5, 0.6, 0.0, 0.4, 0.3],
        "ci_low": [0.3, 0.4, 0.0, 0.2, 0.1], "ci_high": [0.7, 0.8, 0.1, 0.6, 0.5]})
    grid = plots.success_bars(table, x="bits", hue="weights", col="env")
    marks = {env: sorted(round(t.get_position()[0], 3) for t in ax.texts if t.get_text().strip() == plots.NOT_RUN)
             for env, ax in grid.axes_dict.items()}
    # env a: W4 ran per channel only (a measured 0%): its g32 slot, right of centre 1, says "not run"; env b: no W4
    assert marks == {"a": [1.2], "b": [1.0]}
    # the label sits where seaborn would have drawn the missing bar: W4's per-channel bar is centred at 0.8
    centres = sorted(round(p.get_x() + p.get_width() / 2, 3) for p in grid.axes_dict["a"].patches if p.get_width() > 0)
    assert centres == [-0.2, 0.2, 0.8]
    plt.close(grid.figure)


def test_facets_come_in_sorted_order_whatever_the_tables_order():
    plt.close("all")  # the figures earlier tests left open
    rates = _table().assign(env=["wall", "wall", "pusht", "pusht"])
    bars = plots.success_bars(rates, x="bits", hue="granularity", col="env")
    lines = plots.curves(rates.assign(step=[1, 2, 1, 2]), x="step", y="success_rate", col="env")
    assert list(bars.axes_dict) == list(lines.axes_dict) == ["pusht", "wall"]
    plt.close(bars.figure), plt.close(lines.figure)


def test_curves_mark_the_measured_points_when_asked():
    plt.close("all")
    table = pd.DataFrame({"bits": [3, 4, 8, 32], "error": [2.0, 1.0, 0.2, 0.1]})
    plain = plots.curves(table, x="bits", y="error")
    marked = plots.curves(table, x="bits", y="error", marker="o")
    assert [line.get_marker() for line in marked.ax.lines[:1]] == ["o"]
    assert plain.ax.lines[0].get_marker() in ("None", None, "")
    plt.close("all")


def test_frame_strip_titles_its_columns():
    frames = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    fig = plots.frame_strip([frames, frames[:2]], ["real + goal", "imagined"], columns=["t=0", "t=1", "goal"])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["t=0", "t=1", "goal"]
    with pytest.raises(ValueError, match="columns must title every column"):
        plots.frame_strip([frames], ["real"], columns=["t=0"])
