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
    from korllama.evaluate import METRICS_FILE

    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise KorllamaError(f"{folder} holds no {METRICS_FILE}; make one with `korllama evaluate` or "
                            "`korllama baseline`.")
    try:
        result = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KorllamaError(f"{path} is not valid JSON ({exc}); write it again with `korllama evaluate`.") from None
    needed = ("classes", "confusion", "per_class", "macro_f1", "accuracy", "n")
    absent = [k for k in needed if not isinstance(result, dict) or k not in result]
    if absent:
        raise KorllamaError(f"{path} is not a korllama evaluation (no {', '.join(absent)}); make one with "
                            "`korllama evaluate` or `korllama baseline`.")
    result.setdefault("system", Path(folder).name)
    return result


def plots_folder(out_html: str | Path) -> Path:
    """Where compare writes the PNGs: report.html -> report/ (a name without a suffix: report -> report_plots/)."""
    out_html = Path(out_html)
    return out_html.with_suffix("") if out_html.suffix else out_html.with_name(out_html.name + "_plots")


def scored_rows(folders: list[str | Path], evals: list[dict], allow_different: bool = False) -> str:
    """The sentence the report says about the rows: the same for every system (the IDs and true labels in each
    predictions.csv), or, with `allow_different`, how they differ; without it, different rows are refused."""
    import pandas as pd

    from korllama.errors import KorllamaError
    from korllama.evaluate import PREDICTIONS_FILE

    classes = {tuple(e["classes"]) for e in evals}
    if len(classes) > 1:
        raise KorllamaError("The evaluations grade different label sets (" + "; ".join(
            f"{e['system']}: {', '.join(e['classes'])}" for e in evals) + "); a report compares one label set.")
    ids: list[frozenset | None] = []
    for folder in folders:
        try:
            rows = pd.read_csv(Path(folder) / PREDICTIONS_FILE, usecols=["ID", "truth"], dtype=str,
                               keep_default_na=False)
            ids.append(frozenset(zip(rows["ID"], rows["truth"])))
        except (OSError, ValueError):  # absent, or no ID / truth column: the rows cannot be checked
            ids.append(None)
    known = [v for v in ids if v is not None]
    if len(known) == len(ids) and len(set(known)) == 1:
        return f"Every system is scored on the same {len(known[0]):,} rows" if len(ids) > 1 else \
            f"Scored on {len(known[0]):,} rows"
    counts = ", ".join(f"{e['system']} {len(v):,} rows" if v is not None else f"{e['system']} unknown rows (no "
                       f"{PREDICTIONS_FILE} with ID and truth)" for e, v in zip(evals, ids, strict=True))
    if not allow_different:
        raise KorllamaError(f"The evaluations were scored on different rows ({counts}); score every system on the "
                            "same rows (e.g. each with --held-out on the same --data), or pass "
                            "--allow-different-rows.")
    common = f", {len(frozenset.intersection(*known)):,} in common" if len(known) == len(ids) else ""
    return f"The systems are scored on different rows ({counts}{common}), so their figures do not compare directly"


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


def compare(folders: list[str | Path], out_html: str | Path, title: str = "korllama report",
            allow_different_rows: bool = False) -> dict:
    """One self-contained HTML page (PNG plots embedded) comparing evaluations; the PNGs are written beside it.
    The systems must have been scored on the same rows, unless `allow_different_rows` (the page then says so)."""
    import base64
    import html

    from korllama.io import write_text

    evals = [load_evaluation(f) for f in folders]
    rows_sentence = scored_rows(folders, evals, allow_different_rows)
    out_html = Path(out_html)
    assets = plots_folder(out_html)
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
                 _rule_cell(e), f"{e['accuracy']:.4f}", "—" if e.get("qwk") is None else f"{e['qwk']:.4f}",
                 f"{e['invalid_rate']:.1%}" + (f" ({e['off_format_rate']:.0%} off-format)"
                                               if e.get("off_format_rate") else ""), f"{e['n']:,}", speed]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    rows = "".join(row(e) for e in evals)
    figures = "".join(f"<h2>{html.escape(name)}</h2>{img(p)}" for name, p in plots.items() if p is not None)
    figures += disagreements(folders, evals)
    figures += reasons_and_groups(folders, evals, assets, out_html, img)  # cards, importance, groups
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(rows_sentence)}, with the competition's metric, macro-F1 over the grades.
Invalid = answers with no valid grade (generation only; rank scoring always answers a grade).</p>
<p>macro-F1 (rule): the system's macro-F1 decision rule (per-label weights fitted on validation rows) next to
plain argmax, both on the scored rows the rule was not fitted on (evaluate/predict <code>--decision macro-f1</code>).
</p><table><tr><th>system</th><th>mode</th><th>template</th><th>macro-F1</th><th>macro-F1 (rule)</th>
<th>accuracy</th><th>QWK</th><th>invalid</th><th>rows</th><th>rows/s</th></tr>{rows}</table>{figures}</body></html>"""
    write_text(out_html, page)
    return {"report": str(out_html), "systems": [(e["system"], e["macro_f1"]) for e in evals]}


def _rule_cell(e: dict) -> str:
    """The decision rule's macro-F1 beside argmax's on the same rows, when the evaluation has one."""
    d = e.get("decision")
    if not isinstance(d, dict) or not isinstance(d.get("macro-f1"), dict):
        return "—"
    if d["macro-f1"].get("macro_f1") is None:  # every scored row was one the rule was fitted on
        return "— <small>(no row the rule was not fitted on)</small>"
    return (f"{d['macro-f1']['macro_f1']:.4f} <small>(argmax {d['argmax']['macro_f1']:.4f} on "
            f"{d['rows']:,} rows)</small>")


def disagreements(folders: list[str | Path], evals: list[dict]) -> str:
    """For each LLM system next to a tree system (else the first two systems): on the rows both scored, where they
    disagree by true label and which one was right; then the errors on rows whose derived features are missing
    (for the loan table: nothing repaid yet, so no implied rate) apart from the rest."""
    import html

    import pandas as pd

    llm = [i for i, e in enumerate(evals) if e.get("mode") == "score"]
    trees = [i for i, e in enumerate(evals) if e.get("mode") == "trees"]
    pairs = [(i, j) for i in llm for j in trees] or ([(0, 1)] if len(evals) > 1 else [])
    out = []
    for i, j in pairs:
        a, b = (pd.read_csv(Path(folders[k]) / "predictions.csv", dtype={"ID": str}, keep_default_na=False)
                for k in (i, j))
        both = a.merge(b[["ID", "prediction"]], on="ID", suffixes=("_a", "_b"))
        if both.empty:
            continue
        name_a, name_b = (html.escape(evals[k]["system"]) for k in (i, j))
        right_a, right_b = both["prediction_a"] == both["truth"], both["prediction_b"] == both["truth"]
        differ = both["prediction_a"] != both["prediction_b"]
        rows = []
        for label in evals[i]["classes"]:
            at = both["truth"] == label
            rows.append([label, int(at.sum()), int((at & differ).sum()), int((at & differ & right_a).sum()),
                         int((at & differ & right_b).sum()), int((at & differ & ~right_a & ~right_b).sum())])
        rows.append(["all", len(both), int(differ.sum()), int((differ & right_a).sum()), int((differ & right_b).sum()),
                     int((differ & ~right_a & ~right_b).sum())])
        head = f"<tr><th>true label</th><th>rows</th><th>disagree</th><th>{name_a} right</th><th>{name_b} right</th>" \
               "<th>both wrong</th></tr>"
        table = head + "".join("<tr>" + "".join(f"<td>{c:,}</td>" if isinstance(c, int) else f"<td>{html.escape(c)}"
                                                  "</td>" for c in r) + "</tr>" for r in rows)
        out.append(f"<h2>where {name_a} and {name_b} disagree</h2><p>{len(both):,} rows scored by both; they give "
                   f"different labels on {int(differ.sum()):,} ({differ.mean():.1%}).</p><table>{table}</table>")
        missing = _missing_derived(both, evals[i])
        if missing is not None and missing.any():
            parts = []
            for label, mask in (("derived features missing", missing), ("the other rows", ~missing)):
                n = int(mask.sum())
                err_a, err_b = (float((~r[mask]).mean()) if n else 0.0 for r in (right_a, right_b))
                parts.append(f"<tr><td>{label}</td><td>{n:,}</td><td>{err_a:.1%}</td><td>{err_b:.1%}</td></tr>")
            out.append(f"<p>Errors on rows whose derived features are missing (loan table: nothing repaid, no implied "
                       f"rate) and on the rest:</p><table><tr><th>rows</th><th>count</th><th>{name_a} errors</th>"
                       f"<th>{name_b} errors</th></tr>{''.join(parts)}</table>")
    return "".join(out)


def _missing_derived(rows, evaluation: dict):
    """Which rows have a derived feature missing, recomputed from the spec columns predictions.csv carries; None
    when the spec or its columns are not at hand."""
    import numpy as np
    import pandas as pd

    from korllama.data import add_derived
    from korllama.errors import KorllamaError
    from korllama.schema import load_spec

    try:
        spec = load_spec(evaluation.get("spec") or "loan")
    except KorllamaError:
        return None
    needed = {a for d in spec.derived for a in d.args} - {d.alias for d in spec.derived}
    if not spec.derived or not needed <= set(rows.columns):
        return None
    frame = pd.DataFrame({c: pd.to_numeric(rows[c], errors="coerce") for c in needed})
    add_derived(frame, spec)
    return frame[[d.alias for d in spec.derived]].isna().any(axis=1).to_numpy(dtype=bool) & np.ones(len(rows), bool)


# --- reasons, group metrics and model cards (korllama.explain, korllama.card) --------------------------------------

def plot_importance(items: list[tuple[str, object]], path: str | Path, top: int = 15) -> Path | None:
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


def plot_group_f1(items: list[tuple[str, object]], path: str | Path, overall: dict | None = None) -> Path | None:
    """Macro-F1 per group, one panel per column, systems side by side; a dashed line at each system's overall."""
    from korllama.explain import MIN_GROUP_ROWS

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
    from matplotlib.patches import Patch

    handles = [Patch(color=f"C{k}", label=system) for k, (system, _) in enumerate(items)]
    spare = list(axes.flat)[len(columns):]
    if spare:  # the legend in an empty panel, else over the first one
        spare[0].legend(handles=handles, loc="center", fontsize=9, title="system")
    else:
        axes.flat[0].legend(handles=handles, fontsize=7, loc="upper left")
    fig.suptitle(f"macro-F1 by group (rows in brackets; faint: under {MIN_GROUP_ROWS} rows, not compared; dashed: "
                 "the system's overall macro-F1)", fontsize=10)
    return _save(fig, path)


def reasons_and_groups(folders: list[str | Path], evals: list[dict], assets: Path, out_html: Path, img) -> str:
    """The report's sections for model cards, global importance (from a reasons.csv beside an evaluation, written by
    `korllama explain ... --out EVALDIR`) and group metrics (from the group columns of predictions.csv)."""
    import html
    import os

    import pandas as pd

    from korllama.explain import evaluation_groups, group_gaps, importance
    from korllama.run import RunDir

    out = []
    cards = []
    for e in evals:
        if e.get("run") and not e.get("base") and RunDir(e["run"]).model_card.is_file():
            card = RunDir(e["run"]).model_card
            link = os.path.relpath(card.resolve(), out_html.resolve().parent)
            if link not in [c for _, c in cards]:
                cards.append((e["system"], link))
    if cards:
        out.append("<h2>model cards</h2><ul>" + "".join(
            f'<li><a href="{html.escape(link)}">{html.escape(system)}: {html.escape(link)}</a></li>'
            for system, link in cards) + "</ul>")

    weights = []
    for folder, e in zip(folders, evals):
        path = Path(folder) / "reasons.csv"
        if path.is_file():
            frame = pd.read_csv(path, dtype={"id": str, "value": str, "reference": str})
            weights.append((e["system"], importance(frame), frame["id"].nunique()))
    if weights:
        plot = plot_importance([(s, w) for s, w, _ in weights], assets / "importance.png")
        counts = ", ".join(f"{html.escape(s)} {n:,} rows" for s, _, n in weights)
        out.append(f"<h2>global importance</h2><p>Each field the system reads is set in turn to a typical value of "
                   f"the training rows and the row is scored again (<code>korllama explain</code>); the bar is the "
                   f"mean change in the probability of the answered label ({counts}).</p>{img(plot)}")

    groups = [(e["system"], evaluation_groups(folder, e), e) for folder, e in zip(folders, evals)]
    groups = [(s, g, e) for s, g, e in groups if g is not None and not g.empty]
    if groups:
        plot = plot_group_f1([(s, g) for s, g, _ in groups], assets / "group_f1.png",
                             {s: e["macro_f1"] for s, _, e in groups})
        out.append("<h2>group metrics</h2><p>By each category column and by quartiles of each numeric column "
                   "(by value when a column has few). Macro-F1 within a group is over the labels present in it; "
                   "groups under 30 rows are shown but not compared.</p>")
        for system, g, e in groups:
            gaps = group_gaps(g, e["classes"])
            words = "".join(f"<li>{html.escape(x)}</li>" for x in gaps) or "<li>no two groups of 30 rows or more " \
                                                                            "to compare</li>"
            out.append(f"<h3>{html.escape(system)}: largest gaps</h3><ul>{words}</ul>")
        out.append(img(plot))
        for system, g, e in groups:
            out.append(f"<details><summary>{html.escape(system)}: every group</summary>"
                       f"{_group_table(g, e['classes'])}</details>")
    return "".join(out)


def _group_table(groups, classes: list[str]) -> str:
    """An HTML table of group metrics; each label's share of the answers shaded by its size."""
    import html

    head = ("<tr><th>column</th><th>group</th><th>rows</th><th>macro-F1</th><th>accuracy</th><th>mean P(answer)</th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in classes) + "</tr>")
    lines = []
    for _, g in groups.iterrows():
        top = "" if np.isnan(g["mean_top_probability"]) else f"{g['mean_top_probability']:.3f}"
        shares = "".join(f'<td style="background:rgba(31,119,180,{g[f"share_{c}"] * 0.8:.2f})">'
                         f'{g[f"share_{c}"]:.0%}</td>' for c in classes)
        lines.append(f"<tr><td>{html.escape(g['column'])}</td><td>{html.escape(str(g['group']))}</td>"
                     f"<td>{g['rows']:,}</td><td>{g['macro_f1']:.3f}</td><td>{g['accuracy']:.3f}</td><td>{top}</td>"
                     f"{shares}</tr>")
    return f"<table>{head}{''.join(lines)}</table>"
