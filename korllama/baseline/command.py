"""`korllama baseline`: the tree baseline fitted (baseline/tune.py), scored like any other system (the same
metrics.json and predictions.csv) and kept: its folder holds the tuned trees (baseline/saved.py), their spec,
decision rule, neutral references, checksums and what they were fitted on (korllama.layout.TreesDir), so
`korllama predict`, `evaluate`, `explain` and `serve` take it as they take a run (korllama.trees.Trees)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from korllama import __version__
from korllama.baseline.estimator import TreeBaseline
from korllama.baseline.saved import save_trees
from korllama.baseline.tune import fit_baseline
from korllama.choices import Mode
from korllama.data import Table, as_table, split
from korllama.data.table import require_splittable
from korllama.decision import decision_choice
from korllama.defaults import SPLIT_SEED, TEST_FRACTION, VALID_FRACTION
from korllama.errors import KorllamaError
from korllama.evaluation import Evaluation, metrics, side_by_side, write_evaluation
from korllama.groups import group_columns  # the rows' columns, for group metrics in `korllama compare`
from korllama.io import sha256_file, write_text
from korllama.layout import TreesDir
from korllama.outputs import record_written
from korllama.references import reference_values, save_references
from korllama.scoring import predict_labels
from korllama.spec import spec_to_yaml


def run_baseline(train: str | Path | Table, eval_data: str | Path | Table | None, out_dir: str | Path, spec=None,
                 valid_fraction: float = VALID_FRACTION, seed: int = SPLIT_SEED, system: str = "baseline (LightGBM)",
                 decision: str = "argmax", budget_s: float | None = None, console=None,
                 test_fraction: float = TEST_FRACTION) -> Evaluation:
    """Fit the tree baseline (bounded search, korllama.baseline.fit_baseline) and score it like any other system.

    Without `eval_data` the table is split as a run splits it (`valid_fraction`, `test_fraction`, `seed`): the trees
    fit on the training rows and are scored on the held-out rows (the test rows, or the validation rows of a split
    without test rows), the rows a run's `evaluate --held-out` scores.

    The macro-F1 decision rule is fitted on the trees' inner validation rows (a part of the fitting rows, never a
    scored row) and written as DIR/decision.json; `decision` ("argmax" or "macro-f1") chooses the predictions (the
    top-level figures), and metrics.json's `decision` holds both side by side, as for an LLM run.
    """
    decision = decision_choice(decision)

    table = as_table(train, spec)
    if eval_data is None:
        parts = split(table, valid_fraction, seed, test_fraction)
        fit_on, score_on = parts.train, parts.held_out
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
    result.system, result.mode, result.template, result.rows_per_s, result.seconds = \
        system, Mode.TREES, "", len(pred) / seconds, seconds
    result.spec = str(spec) if isinstance(spec, str | Path) else table.spec.name
    result.fit_seconds, result.fit_cpu_seconds, result.train_rows = fitted.seconds, fitted.cpu_seconds, len(fit_on)
    result.data, result.decision_rule, result.search = score_on.source, decision, fitted.trials
    result.run = str(Path(out_dir).resolve())  # the trees are kept there: a system of their own
    result.decision = side_by_side(fitted.rule, score_on.labels, proba, score_on.ids.astype(str), classes)
    groups, result.group_columns = group_columns(score_on)
    write_evaluation(out_dir, result, score_on.ids, score_on.labels, pred, proba, classes, groups)
    keep_trees(out_dir, fitted, fit_on, table, train, system, {"eval": score_on.source} if eval_data is not None else
               {"valid_fraction": valid_fraction, "test_fraction": test_fraction, "seed": seed})
    return result


def keep_trees(out_dir: str | Path, fitted, fit_on: Table, table: Table, train, system: str, how: dict) -> None:
    """The fitted trees as a system of their own in `out_dir` (korllama.layout.TreesDir): the estimator, the spec, the
    decision rule (fitted on inner rows), the neutral references of the fitting rows, the checksums, and trees.json
    last (its presence says the folder is whole)."""
    folder = TreesDir(out_dir)
    if folder.model.is_symlink():  # writing through it would put the trees in someone else's folder
        raise KorllamaError(f"{folder.model} is a link, not korllama's folder of trees: choose another --out.")
    # trees replaced with --overwrite (claim_evaluation checked korllama wrote them): the folder stops being whole
    # first (trees.json, written last, says it is), and no old part may stay beside the new ones, whose checksums
    # alone are recorded
    folder.record.unlink(missing_ok=True)
    if folder.model.is_dir():
        shutil.rmtree(folder.model)
    save_trees(fitted.model, folder.model)
    folder.record_weights(folder.model)
    write_text(folder.spec, spec_to_yaml(fit_on.spec))
    fitted.rule.save(folder.decision)  # what `--decision macro-f1` applies
    save_references(folder.references, reference_values(fit_on), fit_on.source, len(fit_on))
    data = {"source": str(train) if isinstance(train, str | Path) else table.source, "rows": len(table)}
    if isinstance(train, str | Path) and Path(train).is_file():  # what `--held-out` checks its --data against
        data["sha256"] = sha256_file(Path(train))
    kept = next(t for t in fitted.trials if t["kept"])
    record = {"kind": "trees", "korllama": __version__, "system": system, "spec": fit_on.spec.name,
              "data": data, "split": how, "fit_rows": len(fit_on), "settings": kept["params"],
              "rounds": fitted.model.best_iterations_, "fit_seconds": fitted.seconds,
              "fit_cpu_seconds": fitted.cpu_seconds}
    write_text(folder.record, json.dumps(record, indent=1, ensure_ascii=False, default=str))
    record_written(out_dir, [*TreesDir.OWN, *(f"{folder.model.name}/{p.name}" for p in folder.model.iterdir())])
