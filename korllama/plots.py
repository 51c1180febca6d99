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


def plot_confusions(evals: list, path: str | Path | None = None) -> Path | bytes:
    """One row-normalised confusion heatmap per system (rows = truth), counts written in the cells."""
    fig, axes = plt.subplots(1, len(evals), figsize=(4.2 * len(evals), 4.2), dpi=DPI, squeeze=False)
    for ax, e in zip(axes[0], evals):
        counts = np.asarray(e.confusion, dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        classes = e.classes
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{e.system}\nmacro-F1 {e.macro_f1:.3f}", fontsize=10)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_per_class_f1(evals: list, path: str | Path | None = None) -> Path | bytes:
    """Per-grade F1 bars, systems side by side."""
    classes = evals[0].classes
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(classes) + 1), 4), dpi=DPI)
    for k, e in enumerate(evals):
        ax.bar(np.arange(len(classes)) + (k - (len(evals) - 1) / 2) * width,
               [e.per_class[c].f1 for c in classes], width, label=e.system, color=f"C{k}")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_xlabel("grade")
    ax.set_title("F1 per grade")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_reliability(evals: list, path: str | Path | None = None) -> Path | bytes | None:
    """Top-grade confidence vs accuracy for the systems that gave probabilities (perfect calibration = diagonal)."""
    if not any(e.calibration for e in evals):
        return None
    fig, ax = plt.subplots(figsize=(5, 5), dpi=DPI)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    for k, e in enumerate(evals):  # colour k as in the other plots; systems without probabilities are skipped
        cal = e.calibration
        if not cal:
            continue
        pts = [(c, a, n) for c, a, n in zip(cal.confidence, cal.accuracy, cal.count) if c is not None]
        conf, acc, count = zip(*pts)
        ax.plot(conf, acc, "-", color=f"C{k}", label=f"{e.system} (ECE {cal.ece:.3f})")
        # marker area follows the rows in the bin: a bin of three rows should not look like a bin of three thousand
        ax.scatter(conf, acc, s=[8 + 120 * (n / max(count)) for n in count], color=f"C{k}", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted grade")
    ax.set_ylabel("share correct")
    ax.set_title("reliability of the probabilities (marker size = rows)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_importance(items: list[tuple[str, object]], path: str | Path | None = None,
                    top: int = 15) -> Path | bytes | None:
    """Global importance per field (mean |change| of the answered label's probability), one panel per system."""
    items = [(s, w) for s, w in items if w is not None and len(w)]
    if not items:
        return None
    height = max(2.5, 0.32 * min(top, max(len(w) for _, w in items)) + 1.2)
    fig, axes = plt.subplots(1, len(items), figsize=(4.6 * len(items), height), dpi=DPI, squeeze=False)
    for k, (ax, (system, weights)) in enumerate(zip(axes[0], items)):
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
    ncols = min(4, len(columns))
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
    if spare:  # the legend in an empty panel, else over the first one
        spare[0].legend(handles=handles, loc="center", fontsize=9, title="system")
    else:
        axes.flat[0].legend(handles=handles, fontsize=7, loc="upper left")
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="system: macro-F1",
              title_fontsize=8, frameon=False)
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
