"""`korllama baseline`: the tree baseline fitted (baseline/tune.py) and scored like any other system: the same
metrics.json and predictions.csv, and its decision rule beside them."""

from __future__ import annotations

import time
from pathlib import Path

from korllama.baseline.estimator import TreeBaseline
from korllama.baseline.tune import fit_baseline
from korllama.data import Table, as_table, split
from korllama.data.table import require_splittable
from korllama.decision import decision_choice
from korllama.evaluate import metrics, side_by_side, write_evaluation
from korllama.groups import group_columns  # the rows' columns, for group metrics in `korllama compare`
from korllama.outputs import DECISION_FILE, record_written
from korllama.scoring import predict_labels


def run_baseline(train: str | Path | Table, eval_data: str | Path | Table | None, out_dir: str | Path, spec=None,
                 valid_fraction: float = 0.2, seed: int = 0, system: str = "baseline (LightGBM)",
                 decision: str = "argmax", budget_s: float | None = None, console=None) -> dict:
    """Fit the tree baseline (bounded search, korllama.baseline.fit_baseline) and score it like any other system.

    The macro-F1 decision rule is fitted on the trees' inner validation rows (a part of the fitting rows, never a
    scored row) and written as DIR/decision.json; `decision` ("argmax" or "macro-f1") chooses the predictions (the
    top-level figures), and metrics.json's `decision` holds both side by side, as for an LLM run.
    """
    decision = decision_choice(decision)

    table = as_table(train, spec)
    if eval_data is None:
        fit_on, score_on = split(table, valid_fraction, seed)
    else:
        fit_on, score_on = table, as_table(eval_data, table.spec)
    inner = TreeBaseline().validation_fraction  # the trees stop early on this share of the fitting rows
    require_splittable(fit_on, inner, what="the trees' fitting rows split for early stopping",
                       way_out=" to fit on: a larger table")
    fitted = fit_baseline(fit_on, seed=seed, budget_s=budget_s, console=console)
    started = time.perf_counter()
    proba = fitted.model.predict_proba(score_on)
    seconds = time.perf_counter() - started
    classes = table.spec.label.classes
    pred = list(predict_labels(proba, classes) if decision == "argmax" else fitted.rule.apply(proba))
    result = metrics(score_on.labels.tolist(), pred, classes, proba, table.spec.label.ordinal)
    result.update(system=system, mode="trees", template="", rows_per_s=len(pred) / seconds, seconds=seconds,
                  spec=str(spec) if isinstance(spec, str | Path) else table.spec.name,
                  fit_seconds=fitted.seconds, fit_cpu_seconds=fitted.cpu_seconds, train_rows=len(fit_on),
                  data=score_on.source, run=None, decision_rule=decision, search=fitted.trials,
                  decision=side_by_side(fitted.rule, score_on.labels, proba, score_on.ids.astype(str), classes))
    groups, result["group_columns"] = group_columns(score_on)
    write_evaluation(out_dir, result, score_on.ids, score_on.labels, pred, proba, classes, groups)
    fitted.rule.save(Path(out_dir) / DECISION_FILE)  # what `--decision macro-f1` applies, fitted on inner rows
    record_written(out_dir, [DECISION_FILE])
    return result
