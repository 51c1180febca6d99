"""Every figure korllama draws: the training curve, and the report's confusion matrices, F1 per grade, reliability,
global importance and macro-F1 by group. Each is a PNG (matplotlib, no display needed), written atomically to
`path`, or, without one, returned as bytes: the report embeds its figures and writes no image file."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from korllama.groups import MIN_GROUP_ROWS  # noqa: E402
from korllama.io import atomic_path  # noqa: E402

DPI = 110
LOG_SPAN = 20  # the time-to-quality figure's x axis is logarithmic when the costs span more than this factor


def plot_train_curve(log_history: list[dict], path: str | Path | None = None) -> Path | bytes:
    """Training loss by step, with the validation macro-F1 on a second axis."""
    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    f1 = [(e["step"], e["eval_macro_f1"]) for e in log_history if "eval_macro_f1" in e]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)", color="tab:blue")
    ax.grid(alpha=0.3)
    if f1:
        ax2 = ax.twinx()
        ax2.plot(*zip(*f1), "o-", color="tab:orange", label="validation macro-F1")
        ax2.set_ylabel("validation macro-F1 (rank scoring)", color="tab:orange")
        ax2.set_ylim(0, 1)
    ax.set_title("training curve")
    return _save(fig, path)


PER_ROW = 3  # panels per row of a small-multiples figure: each stays ~360 px wide at 1280 px and legible on A4


def _grid(panels: int, width: float, height: float):
    """A figure of `panels` panels, at most PER_ROW a row; the unused panels of the last row switched off."""
    ncols = min(PER_ROW, panels)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), dpi=DPI, squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    return fig, list(axes.flat[:panels])


def plot_confusions(evals: list, path: str | Path | None = None) -> Path | bytes:
    """One confusion matrix per system (rows = truth), at most three a row: each cell its count and its share of
    the true label's rows (the shading), each panel titled with its system, macro-F1 and rows. No suptitle: a
    figure-wide title crowds the panels' own; the report's caption says how to read the cells."""
    fig, axes = _grid(len(evals), 3.7, 3.9)
    for ax, e in zip(axes, evals):
        counts = np.asarray(e.confusion, dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        classes = e.classes
        ax.set_xticks(range(len(classes)), classes, fontsize=9)
        ax.set_yticks(range(len(classes)), classes, fontsize=9)
        ax.set_xlabel("predicted", fontsize=9)
        ax.set_ylabel("true", fontsize=9)
        ax.set_title(f"{e.system}\nmacro-F1 {e.macro_f1:.3f}, {e.n:,} rows", fontsize=10)
        small = len(classes) > 5  # many labels: smaller cells, the share under the count in a smaller type
        for i in range(len(classes)):
            for j in range(len(classes)):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                            fontsize=7 if small else 8.5, linespacing=1.0,
                            color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_per_class_f1(evals: list, path: str | Path | None = None, colours: list[int] | None = None) -> Path | bytes:
    """Per-grade F1 bars, systems side by side; the legend right of the axes, never over the bars."""
    colours = colours or list(range(len(evals)))
    classes = evals[0].classes
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(classes) + 2.5), 3.6), dpi=DPI)
    for k, e in enumerate(evals):
        ax.bar(np.arange(len(classes)) + (k - (len(evals) - 1) / 2) * width,
               [e.per_class[c].f1 for c in classes], width, label=f"{e.system}: {e.macro_f1:.3f}",
               color=f"C{colours[k]}")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_xlabel("grade")
    ax.set_title("F1 per grade")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax, "system: macro-F1")
    return _save(fig, path)


def _legend_outside(ax, title: str) -> None:
    """The legend right of the axes (bbox_inches="tight" widens the PNG to hold it): no legend over data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=title, title_fontsize=8,
              frameon=False)


def plot_reliability(evals: list, path: str | Path | None = None,
                     colours: list[int] | None = None) -> Path | bytes | None:
    """Top-grade confidence vs accuracy, one panel per system that gave probabilities, at most three a row, the
    ECE in each title (perfect calibration = the diagonal; marker area = the rows in the bin)."""
    colours = colours or list(range(len(evals)))
    shown = [(e, colours[k]) for k, e in enumerate(evals) if e.calibration]
    if not shown:
        return None
    fig, axes = _grid(len(shown), 3.4, 3.5)
    for ax, (e, k) in zip(axes, shown):
        cal = e.calibration
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        pts = [(c, a, n) for c, a, n in zip(cal.confidence, cal.accuracy, cal.count) if c is not None]
        conf, acc, count = zip(*pts)
        ax.plot(conf, acc, "-", color=f"C{k}")
        # marker area follows the rows in the bin: a bin of three rows should not look like a bin of three thousand
        ax.scatter(conf, acc, s=[8 + 120 * (n / max(count)) for n in count], color=f"C{k}", zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence of the predicted grade", fontsize=9)
        ax.set_ylabel("share correct", fontsize=9)
        ax.set_title(f"{e.system}\nECE {cal.ece:.3f}, {e.n:,} rows", fontsize=10)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_importance(items: list[tuple[str, object]], path: str | Path | None = None,
                    top: int = 15) -> Path | bytes | None:
    """Global importance per field (mean |change| of the answered label's probability), one panel per system."""
    items = [(s, w) for s, w in items if w is not None and len(w)]
    if not items:
        return None
    height = max(2.5, 0.32 * min(top, max(len(w) for _, w in items)) + 1.2)
    fig, axes = _grid(len(items), 4.6, height)
    for k, (ax, (system, weights)) in enumerate(zip(axes, items)):
        shown = weights.head(top)[::-1]
        ax.barh(range(len(shown)), shown.to_numpy(), color=f"C{k}")
        ax.set_yticks(range(len(shown)), list(shown.index), fontsize=8)
        ax.set_xlabel("mean |change in P(answer)|", fontsize=8)
        ax.set_title(system, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("what each system leans on: the field set to a typical value, the row scored again", fontsize=10)
    return _save(fig, path)


def plot_group_f1(items: list[tuple[str, object]], path: str | Path | None = None,
                  overall: dict | None = None) -> Path | bytes | None:
    """Macro-F1 per group, one panel per column, systems side by side; a dashed line at each system's overall."""
    items = [(s, g) for s, g in items if g is not None and not g.empty]
    if not items:
        return None
    columns = list(dict.fromkeys(c for _, g in items for c in g["column"]))
    ncols = min(PER_ROW, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), dpi=DPI, squeeze=False)
    width = 0.8 / len(items)
    for ax, column in zip(axes.flat, columns):
        names = list(dict.fromkeys(n for _, g in items for n in g.loc[g["column"] == column, "group"]))
        for k, (system, g) in enumerate(items):
            part = g[g["column"] == column].set_index("group").reindex(names)
            small = part["rows"].fillna(0).to_numpy() < MIN_GROUP_ROWS
            bars = ax.bar(np.arange(len(names)) + (k - (len(items) - 1) / 2) * width, part["macro_f1"].to_numpy(),
                          width, color=f"C{k}", label=system)
            for bar, faint in zip(bars, small):
                bar.set_alpha(0.3 if faint else 1.0)
            if overall and system in overall:
                ax.axhline(overall[system], color=f"C{k}", linestyle="--", linewidth=0.8)
        rows = items[0][1].set_index(["column", "group"])["rows"]
        many = len(names) > 6  # many groups: one line each, steeper
        ax.set_xticks(range(len(names)), [f"{n}{' ' if many else chr(10)}({rows.get((column, n), 0):,})"
                                          for n in names], fontsize=6,
                      rotation=60 if many else 30 if len(names) > 3 else 0,
                      ha="right" if len(names) > 3 else "center", rotation_mode="anchor")
        ax.set_ylim(0, 1.05)
        ax.set_title(column, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    handles = [Patch(color=f"C{k}", label=system) for k, (system, _) in enumerate(items)]
    spare = list(axes.flat)[len(columns):]
    if spare:  # the legend in an empty panel, else right of the panels: never over a panel's bars
        spare[0].legend(handles=handles, loc="center", fontsize=9, title="system")
    else:
        fig.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95), title="system",
                   frameon=False)
    fig.suptitle(f"macro-F1 by group (rows in brackets; faint: under {MIN_GROUP_ROWS} rows, not compared; dashed: "
                 "the system's overall macro-F1)", fontsize=10)
    return _save(fig, path)


def plot_time_to_quality(points: list[tuple[str, float, float, int]], curves: list[tuple[str, list, int]],
                         path: str | Path | None = None) -> Path | bytes:
    """Macro-F1 against training CPU minutes: a marker per system (name, minutes, macro-F1, colour k), named in the
    legend with its macro-F1 (labels beside close markers would overlap), and a thinner line per run's validation
    curve (name, [(minutes, macro-F1)], colour k: its system's colour)."""
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=DPI)
    for _, curve, k in curves:
        x, y = zip(*curve)
        ax.plot(x, y, ".-", color=f"C{k}", alpha=0.45, linewidth=1.2)
    for name, minutes, f1, k in points:
        ax.scatter([minutes], [f1], s=70, marker="D", color=f"C{k}", edgecolor="black", zorder=3,
                   label=f"{name}: {f1:.3f}")
    xs = [m for _, m, _, _ in points] + [x for _, curve, _ in curves for x, _ in curve]
    ys = [f for _, _, f, _ in points] + [y for _, curve, _ in curves for _, y in curve]
    if min(xs) > 0 and max(xs) / min(xs) > LOG_SPAN:
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    else:
        ax.set_xlim(0, max(xs) * 1.1 or 1.0)  # every cost 0 (rounded down): still an axis, not a singular one
    ax.set_ylim(max(0.0, np.floor(min(ys) * 10 - 0.5) / 10), 1.0)  # zoomed to the figures, to the 0.1 below them
    ax.set_xlabel("training CPU minutes" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("macro-F1")
    ax.set_title("time to quality: marker = macro-F1 on the scored rows, line = a run's validation curve",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _legend_outside(ax, "system: macro-F1")
    return _save(fig, path)


def _save(fig, path) -> Path | bytes:
    fig.tight_layout()
    try:
        if path is None:
            png = io.BytesIO()
            fig.savefig(png, format="png", bbox_inches="tight")  # keep two-line titles whole
            return png.getvalue()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        return Path(path)
    finally:
        plt.close(fig)
