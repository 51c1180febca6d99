"""Plots and the HTML report. Every figure is a PNG written atomically (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from korllama.io import atomic_path  # noqa: E402

DPI = 110


def plot_train_curve(log_history: list[dict], path: str | Path) -> Path:
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


# --- comparing evaluations ----------------------------------------------------------------------------------------

def load_evaluation(folder: str | Path) -> dict:
    """metrics.json of an evaluation folder, with its name ('system') defaulting to the folder name."""
    import json

    from korllama.errors import KorllamaError

    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise KorllamaError(f"{folder} holds no metrics.json; make one with `korllama evaluate` or "
                            "`korllama baseline`.")
    result = json.loads(path.read_text("utf-8"))
    result.setdefault("system", Path(folder).name)
    return result


def plot_confusions(evals: list[dict], path: str | Path) -> Path:
    """One row-normalised confusion heatmap per system (rows = truth), counts written in the cells."""
    fig, axes = plt.subplots(1, len(evals), figsize=(4.2 * len(evals), 4.2), dpi=DPI, squeeze=False)
    for ax, e in zip(axes[0], evals):
        counts = np.asarray(e["confusion"], dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        classes = e["classes"]
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{e['system']}\nmacro-F1 {e['macro_f1']:.3f}", fontsize=10)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_per_class_f1(evals: list[dict], path: str | Path) -> Path:
    """Per-grade F1 bars, systems side by side."""
    classes = evals[0]["classes"]
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(classes) + 1), 4), dpi=DPI)
    for k, e in enumerate(evals):
        ax.bar(np.arange(len(classes)) + (k - (len(evals) - 1) / 2) * width,
               [e["per_class"][c]["f1"] for c in classes], width, label=e["system"], color=f"C{k}")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_xlabel("grade")
    ax.set_title("F1 per grade")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_reliability(evals: list[dict], path: str | Path) -> Path | None:
    """Top-grade confidence vs accuracy for the systems that gave probabilities (perfect calibration = diagonal)."""
    if not any(e.get("calibration") for e in evals):
        return None
    fig, ax = plt.subplots(figsize=(5, 5), dpi=DPI)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    for k, e in enumerate(evals):  # colour k as in the other plots; systems without probabilities are skipped
        cal = e.get("calibration")
        if not cal:
            continue
        pts = [(c, a, n) for c, a, n in zip(cal["confidence"], cal["accuracy"], cal["count"]) if c is not None]
        conf, acc, count = zip(*pts)
        ax.plot(conf, acc, "-", color=f"C{k}", label=f"{e['system']} (ECE {cal['ece']:.3f})")
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


def _save(fig, path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")  # keep two-line titles whole
    plt.close(fig)
    return Path(path)


def compare(folders: list[str | Path], out_html: str | Path, title: str = "korllama report") -> dict:
    """One self-contained HTML page (PNG plots embedded) comparing evaluations; the PNGs are written beside it."""
    import base64
    import html

    from korllama.io import write_text

    evals = [load_evaluation(f) for f in folders]
    out_html = Path(out_html)
    assets = out_html.with_suffix("")  # report.html -> report/ holds the PNGs
    plots = {"confusion matrices": plot_confusions(evals, assets / "confusion.png"),
             "F1 per grade": plot_per_class_f1(evals, assets / "per_class_f1.png"),
             "reliability": plot_reliability(evals, assets / "reliability.png")}
    for e in evals:  # each run's curve once, and not for a bare base model scored with the run's prompts
        curve = Path(e["run"]) / "train_curve.png" if e.get("run") and not e.get("base") else None
        if curve is not None and curve.is_file() and curve not in plots.values():
            plots[f"training curve: {e['system']}"] = curve

    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<img alt="{html.escape(p.name)}" src="data:image/png;base64,{data}">'

    def row(e: dict) -> str:
        speed = f"{e['rows_per_s']:,.1f}" if e.get("rows_per_s") else ""
        cells = [html.escape(e["system"]), e.get("mode", ""), e.get("template", ""), f"<b>{e['macro_f1']:.4f}</b>",
                 f"{e['accuracy']:.4f}", f"{e['qwk']:.4f}", f"{e['invalid_rate']:.1%}", f"{e['n']:,}", speed]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    rows = "".join(row(e) for e in evals)
    figures = "".join(f"<h2>{html.escape(name)}</h2>{img(p)}" for name, p in plots.items() if p is not None)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Every system is scored on the same rows with the competition's metric, macro-F1 over the grades.
Invalid = answers with no valid grade (generation only; rank scoring always answers a grade).</p>
<table><tr><th>system</th><th>mode</th><th>template</th><th>macro-F1</th><th>accuracy</th><th>QWK</th>
<th>invalid</th><th>rows</th><th>rows/s</th></tr>{rows}</table>{figures}</body></html>"""
    write_text(out_html, page)
    return {"report": str(out_html), "systems": [(e["system"], e["macro_f1"]) for e in evals]}
