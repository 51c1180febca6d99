"""Tests for korllama.plots: every figure is a PNG written atomically, even with nothing to draw yet."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from korllama import plots
from korllama.plots import plot_group_f1, plot_importance, plot_train_curve

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_train_curve_writes_a_png(tmp_path):
    history = [{"step": s, "loss": 3.0 / s} for s in range(1, 6)] + [{"step": 5, "eval_macro_f1": 0.3}]
    path = plot_train_curve(history, tmp_path / "deep" / "curve.png")
    assert path.read_bytes().startswith(PNG)
    assert plot_train_curve([], tmp_path / "empty.png").read_bytes().startswith(PNG)  # no history yet: still a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "empty.png"]  # no temporary files left


def test_plots_of_reasons_and_groups_are_none_without_data_else_a_png(tmp_path):
    assert plot_importance([("a", None)], tmp_path / "i.png") is None and not (tmp_path / "i.png").exists()
    assert plot_group_f1([("a", pd.DataFrame())], tmp_path / "g.png") is None and not (tmp_path / "g.png").exists()
    weights = pd.Series({"term": 0.3, "implied_rate": 0.1})
    assert plot_importance([("a", weights)], tmp_path / "i.png").read_bytes().startswith(PNG)
    groups = pd.DataFrame({"column": ["term", "term"], "group": ["36", "60"], "rows": [40, 10],
                           "macro_f1": [0.8, 0.4]})
    assert plot_group_f1([("a", groups)], tmp_path / "g.png", {"a": 0.7}).read_bytes().startswith(PNG)


@pytest.mark.parametrize("points, curves, scale, left", [
    ([("run", 30.0, 0.6, 0), ("trees", 0.5, 0.5, 1)], [("run", [(10.0, 0.4)], 0)], "log", 0.5 / 1.5),  # one point
    ([("run", 30.0, 0.6, 0), ("trees", 0.0, 0.5, 1)], [], "linear", 0.0),  # a zero cost: no log axis
    ([("trees", 0.0, 0.5, 0)], [], "linear", 0.0),  # every cost zero: an axis all the same
    ([("a", 2.0, 0.6, 0), ("b", 1.0, 0.5, 1)], [("a", [(0.5, 0.3), (2.0, 0.6)], 0)], "linear", 0.0),
])
def test_time_to_quality_axes(points, curves, scale, left, monkeypatch):
    monkeypatch.setattr(plots, "_save", lambda fig, path: fig)  # the figure itself, to look at its axes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a singular axis rather than failing
        ax = plots.plot_time_to_quality(points, curves).axes[0]
    (low, high), xscale, xlabel = ax.get_xlim(), ax.get_xscale(), ax.get_xlabel()
    plots.plt.close(ax.figure)
    assert xscale == scale and low == pytest.approx(left) and high > low
    assert xlabel.endswith("(log scale)") == (scale == "log")
