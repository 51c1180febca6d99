"""The HTML report: `korllama compare` puts evaluations side by side in one self-contained page, laid out by
korllama/templates/report.html.j2 from the figures prepared here (the PNGs of korllama.plots, embedded)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pandas as pd

from korllama import plots
from korllama.choices import Mode
from korllama.cost import time_to_quality
from korllama.data.table import add_derived
from korllama.errors import KorllamaError
from korllama.evaluation import PREDICTIONS_FILE, REASONS_FILE, Evaluation, read_evaluation
from korllama.explain import importance
from korllama.groups import MIN_GROUP_ROWS, evaluation_groups, group_gaps
from korllama.io import write_text
from korllama.layout import RunDir
from korllama.spec import load_spec
from korllama.templates import render
from korllama.verdict import row_set, scored, verdict

# --- comparing evaluations ----------------------------------------------------------------------------------------

def scored_rows(folders: list[str | Path], evals: list[Evaluation], allow_different: bool = False) -> str:
    """The sentence the report says about the rows: the same for every system (the IDs and true labels in each
    predictions.csv), or, with `allow_different`, how they differ; without it, different rows are refused."""

    classes = {tuple(e.classes) for e in evals}
    if len(classes) > 1:
        raise KorllamaError("The evaluations grade different label sets (" + "; ".join(
            f"{e.system}: {', '.join(e.classes)}" for e in evals) + "); a report compares one label set.")
    ids = [row_set(scored(folder)) for folder in folders]  # None: absent, or no ID / truth: cannot be checked
    known = [v for v in ids if v is not None]
    if len(known) == len(ids) and len(set(known)) == 1:
        return f"Every system is scored on the same {len(known[0]):,} rows" if len(ids) > 1 else \
            f"Scored on {len(known[0]):,} rows"
    counts = ", ".join(f"{e.system} {len(v):,} rows" if v is not None else f"{e.system} unknown rows (no "
                       f"{PREDICTIONS_FILE} with ID and truth)" for e, v in zip(evals, ids, strict=True))
    if not allow_different:
        raise KorllamaError(f"The evaluations were scored on different rows ({counts}); score every system on the "
                            "same rows (e.g. each with --held-out on the same --data), or pass "
                            "--allow-different-rows.")
    common = f", {len(frozenset.intersection(*known)):,} in common" if len(known) == len(ids) else ""
    return (f"The systems are scored on different rows ({counts}{common}): the verdict and each set of figures "
            "put side by side only systems scored on one set of rows")


def compare(folders: list[str | Path], out_html: str | Path, title: str = "korllama report",
            allow_different_rows: bool = False) -> dict:
    """One self-contained HTML page comparing evaluations (its PNG plots embedded; no other file is written).
    The systems must have been scored on the same rows, unless `allow_different_rows` (the page then says so)."""
    evals = [read_evaluation(f) for f in folders]
    rows_sentence = scored_rows(folders, evals, allow_different_rows)
    out_html = Path(out_html)
    found = verdict(folders, evals)
    groups = found.pop("groups")
    figure_sets = [_figure_set(g, evals, groups) for g in groups]
    curves = {}
    for e in evals:  # each run's curve once, and not for a bare base model scored with the run's prompts
        curve = RunDir(e.own_run).train_curve if e.own_run is not None else None
        if curve is not None and curve.is_file() and curve not in curves.values():
            curves[f"training curve: {e.system}"] = curve
    # systems on other rows: the time-to-quality legend names each one's rows, as the verdict does
    named = evals if len(groups) == 1 else [e.model_copy(update={"system": f"{e.system} ({e.n:,} rows)"})
                                            for e in evals]
    quality = time_to_quality(named)
    png = quality.pop("png")
    quality["image"] = _image(png, "time to quality: macro-F1 against training CPU minutes") if png else None
    page = render("report.html.j2", title=title, rows_sentence=rows_sentence, systems=[_system(e) for e in evals],
                  verdict=found, figure_sets=figure_sets, time_to_quality=quality,
                  figures=[{"name": name, "image": _image(p, name)} for name, p in curves.items()],
                  disagreements=disagreements(folders, evals), cards=model_cards(evals, out_html),
                  importance=global_importance(folders, evals), groups=group_sections(folders, evals))
    write_text(out_html, page)
    return {"report": str(out_html), "systems": [(e.system, e.macro_f1) for e in evals]}


def _figure_set(group: list[int], evals: list[Evaluation], groups: list[list[int]]) -> dict:
    """The figures of the systems scored on one set of rows (never set beside systems scored on others), each
    system in its colour of the whole page; the heading says whose rows they are when the page has several sets."""
    members = [evals[k] for k in group]
    rows = f"{members[0].n:,} rows"
    names = ", ".join(e.system for e in members)
    heading = None
    if len(groups) > 1:
        heading = f"on the verdict's {rows}" if group is groups[0] else f"on other rows: {names} ({rows})"
    without = [e.system for e in members if not e.calibration]
    figures = [{"name": "confusion matrices", "image": _image(plots.plot_confusions(members),
                                                              f"confusion matrices of {names} on {rows}"),
                "note": "Rows: the true grade; columns: the answer. Each cell: its count, and its share of the "
                        "true grade's rows (the shading)."},
               {"name": "F1 per grade", "image": _image(plots.plot_per_class_f1(members, colours=group),
                                                        f"F1 per grade of {names} on {rows}")}]
    reliability = plots.plot_reliability(members, colours=group)
    if reliability is not None:
        figures.append({"name": "reliability", "image": _image(
            reliability, f"reliability of the probabilities of {names} on {rows}"),
            "note": "The top grade's probability against how often it is right, in ten bins (dashed: perfectly "
                    "calibrated; marker size: rows in the bin); ECE: the bins' mean gap, weighted by rows."
                    + (f" No probabilities, not drawn: {', '.join(without)}." if without else "")})
    return {"heading": heading, "figures": figures}


def _image(png: bytes | Path, name: str) -> dict:
    """A PNG for the page (its bytes, or a run's file): its name and its bytes in base64 (the page embeds it)."""
    data = png.read_bytes() if isinstance(png, Path) else png
    return {"alt": name, "data": base64.b64encode(data).decode()}


def _system(e: Evaluation) -> dict:
    """One line of the systems table, formatted."""
    off_format = f" ({e.off_format_rate:.0%} off-format)" if e.off_format_rate else ""
    return {"system": e.system, "mode": str(e.mode), "template": e.template,
            "macro_f1": f"{e.macro_f1:.4f}", "rule": _rule(e), "accuracy": f"{e.accuracy:.4f}",
            "qwk": "—" if e.qwk is None else f"{e.qwk:.4f}",
            "invalid": f"{e.invalid_rate:.1%}{off_format}", "rows": f"{e.n:,}",
            "rows_per_s": f"{e.rows_per_s:,.1f}" if e.rows_per_s else ""}


def _rule(e: Evaluation) -> dict | None:
    """The decision rule's macro-F1 beside argmax's on the same rows, when the evaluation has one (macro_f1 None:
    every scored row was one the rule was fitted on)."""
    d = e.decision
    if d is None:
        return None
    if d.rule.macro_f1 is None:
        return {"macro_f1": None}
    return {"macro_f1": f"{d.rule.macro_f1:.4f}", "argmax": f"{d.argmax.macro_f1:.4f}", "rows": f"{d.rows:,}"}


def disagreements(folders: list[str | Path], evals: list[Evaluation]) -> list[dict]:
    """For each LLM system next to a tree system (else the first two systems): on the rows both scored, where they
    disagree by true label and which one was right; then the errors on rows whose derived features are missing
    (for the loan table: nothing repaid yet, so no implied rate) apart from the rest."""
    llm = [i for i, e in enumerate(evals) if e.mode == Mode.SCORE]
    trees = [i for i, e in enumerate(evals) if e.trees]
    pairs = [(i, j) for i in llm for j in trees] or ([(0, 1)] if len(evals) > 1 else [])
    out = []
    for i, j in pairs:
        a, b = (pd.read_csv(Path(folders[k]) / PREDICTIONS_FILE, dtype={"ID": str}, keep_default_na=False)
                for k in (i, j))
        both = a.merge(b[["ID", "prediction"]], on="ID", suffixes=("_a", "_b"))
        if both.empty:
            continue
        right_a, right_b = both["prediction_a"] == both["truth"], both["prediction_b"] == both["truth"]
        differ = both["prediction_a"] != both["prediction_b"]
        rows = []
        for label in evals[i].classes:
            at = both["truth"] == label
            rows.append([label, int(at.sum()), int((at & differ).sum()), int((at & differ & right_a).sum()),
                         int((at & differ & right_b).sum()), int((at & differ & ~right_a & ~right_b).sum())])
        rows.append(["all", len(both), int(differ.sum()), int((differ & right_a).sum()), int((differ & right_b).sum()),
                     int((differ & ~right_a & ~right_b).sum())])
        section = {"a": evals[i].system, "b": evals[j].system, "rows": f"{len(both):,}",
                   "differ": f"{int(differ.sum()):,}", "differ_share": f"{differ.mean():.1%}",
                   "by_label": [[f"{c:,}" if isinstance(c, int) else c for c in r] for r in rows], "missing": []}
        missing = _missing_derived(both, evals[i])
        if missing is not None and missing.any():
            for label, mask in (("derived features missing", missing), ("the other rows", ~missing)):
                n = int(mask.sum())
                err_a, err_b = (float((~r[mask]).mean()) if n else 0.0 for r in (right_a, right_b))
                section["missing"].append([label, f"{n:,}", f"{err_a:.1%}", f"{err_b:.1%}"])
        out.append(section)
    return out


def _missing_derived(rows, evaluation: Evaluation):
    """Which rows have a derived feature missing, recomputed from the spec columns predictions.csv carries; None
    when the spec or its columns are not at hand."""
    try:
        spec = load_spec(evaluation.spec or "loan")
    except KorllamaError:
        return None
    needed = {a for d in spec.derived for a in d.args} - {d.alias for d in spec.derived}
    if not spec.derived or not needed <= set(rows.columns):
        return None
    frame = pd.DataFrame({c: pd.to_numeric(rows[c], errors="coerce") for c in needed})
    add_derived(frame, spec)
    return frame[[d.alias for d in spec.derived]].isna().any(axis=1).to_numpy(dtype=bool) & np.ones(len(rows), bool)


# --- model cards, global importance and group metrics (korllama.card, korllama.explain, korllama.groups) ----------

def model_cards(evals: list[Evaluation], out_html: Path) -> list[dict]:
    """Links to the model cards of the runs evaluated (none for a bare base), relative to the page, each once."""
    cards: list[dict] = []
    for e in evals:
        card = RunDir(e.own_run).model_card if e.own_run is not None else None
        if card is not None and card.is_file():
            link = os.path.relpath(card.resolve(), out_html.resolve().parent)
            if link not in [c["link"] for c in cards]:
                cards.append({"system": e.system, "link": link})
    return cards


def global_importance(folders: list[str | Path], evals: list[Evaluation]) -> dict | None:
    """The importance section, from a reasons.csv beside an evaluation (`korllama explain ... --out EVALDIR`)."""
    weights = []
    for folder, e in zip(folders, evals):
        path = Path(folder) / REASONS_FILE
        if path.is_file():
            frame = pd.read_csv(path, dtype={"id": str, "value": str, "reference": str})
            weights.append((e.system, importance(frame), frame["id"].nunique()))
    if not weights:
        return None
    plot = plots.plot_importance([(s, w) for s, w, _ in weights])
    return {"counts": ", ".join(f"{s} {n:,} rows" for s, _, n in weights), "image": _image(plot, "importance")}


def group_sections(folders: list[str | Path], evals: list[Evaluation]) -> dict | None:
    """The group metrics section (from the group columns of predictions.csv): each system's largest gaps in words,
    the plot, and every group's figures, each label's share of the answers shaded by its size."""
    groups = [(e.system, evaluation_groups(folder, e), e) for folder, e in zip(folders, evals)]
    groups = [(s, g, e) for s, g, e in groups if g is not None and not g.empty]
    if not groups:
        return None
    plot = plots.plot_group_f1([(s, g) for s, g, _ in groups], overall={s: e.macro_f1 for s, _, e in groups})
    return {"min_rows": MIN_GROUP_ROWS, "image": _image(plot, "macro-F1 by group"),
            "systems": [{"system": s, "gaps": group_gaps(g, e.classes), "classes": e.classes,
                         "table": _group_rows(g, e.classes)} for s, g, e in groups]}


def _group_rows(groups: pd.DataFrame, classes: list[str]) -> list[dict]:
    return [{"column": g["column"], "group": str(g["group"]), "rows": f"{g['rows']:,}",
             "macro_f1": f"{g['macro_f1']:.3f}", "accuracy": f"{g['accuracy']:.3f}",
             "top": "" if np.isnan(g["mean_top_probability"]) else f"{g['mean_top_probability']:.3f}",
             "shares": [{"alpha": f"{g[f'share_{c}'] * 0.8:.2f}", "share": f"{g[f'share_{c}']:.0%}"} for c in classes]}
            for _, g in groups.iterrows()]
