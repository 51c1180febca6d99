"""Tests for korllama.plots: every figure is a PNG written atomically, even with nothing to draw yet."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from korllama import plots
from korllama.plots import plot_group_f1, plot_importance, plot_train_curve

CLASSES = list("ABCDEFG")
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


def _evals(n: int) -> list:
    from korllama.evaluation import metrics

    rng = np.random.default_rng(0)
    truth = [CLASSES[i] for i in rng.integers(0, 7, 200)]
    out = []
    for k in range(n):
        pred = [t if rng.random() < 0.7 else "A" for t in truth]
        proba = rng.dirichlet(np.ones(7), size=200)
        e = metrics(truth, pred, CLASSES, proba)
        e.system = f"system {k} with a long name"
        out.append(e)
    return out


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _figure(monkeypatch, draw):
    monkeypatch.setattr(plots, "_save", lambda fig, path: fig)  # the figure itself, to measure it
    fig = draw()
    fig.canvas.draw()
    return fig


@pytest.mark.parametrize("draw", [
    lambda: plots.plot_per_class_f1(_evals(6)),
    lambda: plots.plot_time_to_quality([("run", 30.0, 0.6, 0), ("trees", 0.5, 0.5, 1)], [("run", [(10.0, 0.4)], 0)]),
    lambda: plots.plot_group_f1([(f"s{k}", pd.DataFrame({"column": ["term", "term", "grade", "grade", "x", "x"],
                                                         "group": ["36", "60", "a", "b", "1", "2"],
                                                         "rows": [40] * 6, "macro_f1": [0.8, 0.4] * 3}))
                                 for k in range(3)]),  # three columns fill the row: no spare panel for the legend
])
def test_no_legend_over_data(draw, monkeypatch):
    fig = _figure(monkeypatch, draw)
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not [ax for ax in fig.axes if ax.axison and _overlap(box, ax.get_window_extent(renderer))]
    plots.plt.close(fig)


@pytest.mark.parametrize("n, shape", [(1, (1, 1)), (3, (1, 3)), (4, (2, 3)), (8, (3, 3))])
def test_small_multiples_are_at_most_three_a_row_each_titled(n, shape, monkeypatch):
    evals = _evals(n)
    for draw, needle in ((plots.plot_confusions, "macro-F1"), (plots.plot_reliability, "ECE")):
        fig = _figure(monkeypatch, lambda draw=draw: draw(evals))
        grid = fig.axes[0].get_subplotspec().get_gridspec()
        assert (grid.nrows, grid.ncols) == shape
        shown = [ax for ax in fig.axes if ax.axison]
        assert len(shown) == n
        assert [ax.get_title().split("\n")[0] for ax in shown] == [e.system for e in evals]
        assert all(needle in ax.get_title() and "200 rows" in ax.get_title() for ax in shown)
        plots.plt.close(fig)
