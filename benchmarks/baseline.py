"""The tree baseline on the real table: what `korllama baseline` gives, and what each feature gives.

    python benchmarks/baseline.py --data ../shared/data/dacon-loan/train.csv
    python benchmarks/baseline.py --data ../shared/data/dacon-loan/train.csv --budget 0  # the first setting only
    python benchmarks/baseline.py --data ../shared/data/dacon-loan/train.csv --drop schedule_rate  # an ablation

Fits on a stratified 80% of --data (`korllama.data.split`, seed 0) exactly as `korllama baseline` does
(`korllama.baseline.fit_baseline`: the bounded search with early stopping on an inner 10% of those rows, then the
macro-F1 decision rule fitted on the same inner rows) and prints, on the other 20%: macro-F1 and accuracy with plain
argmax and with the decision rule, F1 per grade, accuracy on the rows with and without repayment (no implied rate),
wall and CPU seconds of the fit. `--drop COLUMN` leaves features out (repeatable), `--settings JSON` replaces the
search's list of settings (e.g. '[{"num_leaves": 31}]').
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the labelled table (../shared/data/dacon-loan/train.csv)")
    parser.add_argument("--budget", type=float, default=600, help="seconds for the search (as korllama baseline)")
    parser.add_argument("--drop", action="append", default=[], help="a feature to leave out (repeatable)")
    parser.add_argument("--settings", default=None, help="JSON list of settings to try instead of the search's")
    parser.add_argument("--valid-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-refit", action="store_true", help="keep the early-stopped model (no refit on all rows)")
    args = parser.parse_args(argv)

    from rich.console import Console
    from sklearn.metrics import f1_score

    import korllama.baseline as baseline
    import korllama.baseline.estimator as estimator  # where TreeBaseline.fit(table) looks up table_features
    from korllama.data import read_table, split
    from korllama.evaluation import side_by_side

    console = Console(stderr=True)
    table = read_table(args.data)
    fit_on, score_on, _ = split(table, args.valid_fraction, args.seed)
    classes = list(table.spec.label.classes)
    print(f"korllama tree baseline on {table.source}: fit on {len(fit_on):,} rows, scored on {len(score_on):,} "
          f"(stratified {args.valid_fraction:.0%}, seed {args.seed}); {os.cpu_count()} CPUs, {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    if args.drop:  # an ablation: the same estimator on X without these columns
        unknown = set(args.drop) - set(baseline.table_features(fit_on).columns)
        if unknown:
            raise SystemExit(f"--drop: no feature {', '.join(sorted(unknown))}")
        original = estimator.table_features
        estimator.table_features = lambda t: original(t).drop(columns=args.drop)
        print(f"features left out: {', '.join(args.drop)}")
    candidates = json.loads(args.settings) if args.settings else None
    wall, cpu = time.perf_counter(), time.process_time()
    fitted = baseline.fit_baseline(fit_on, seed=args.seed, budget_s=args.budget, candidates=candidates,
                                   console=console, say=print,
                                   refit=not args.no_refit)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    proba = fitted.model.predict_proba(score_on)
    truth = score_on.labels.to_numpy(dtype=object)
    both = side_by_side(fitted.rule, truth, proba, score_on.ids.astype(str), classes)
    assert both.left_out_fitting_rows == 0  # the rule was fitted on inner rows of the 80% only
    plain = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    rated = np.isfinite(score_on.frame["implied_rate"].to_numpy(dtype=float)) \
        if "implied_rate" in score_on.frame else np.ones(len(truth), bool)
    per_grade = f1_score(truth, plain, labels=classes, average=None, zero_division=0)
    kept = next(t for t in fitted.trials if t["kept"])
    result = {
        "argmax_macro_f1": both.argmax.macro_f1, "argmax_accuracy": both.argmax.accuracy,
        "decision_macro_f1": both.rule.macro_f1, "decision_accuracy": both.rule.accuracy,
        "weights": both.weights, "cross_checked_gain": fitted.rule.cross_checked_gain, "kept": kept,
        "fit_wall_s": wall, "fit_cpu_s": cpu,
        "accuracy_repaid": float((plain == truth)[rated].mean()),
        "accuracy_nothing_repaid": float((plain == truth)[~rated].mean()) if (~rated).any() else None,
        "f1_per_grade": dict(zip(classes, map(float, per_grade))),
    }
    print(f"kept: {kept['params'] or 'defaults'} ({kept['iterations']} trees)")
    print(f"macro-F1 {result['argmax_macro_f1']:.4f} argmax, {result['decision_macro_f1']:.4f} decision rule; "
          f"accuracy {result['argmax_accuracy']:.4f} / {result['decision_accuracy']:.4f}")
    gain = result["cross_checked_gain"]
    why = fitted.rule.argmax_kept or (f"gain on left-out folds of the inner rows: {gain:+.4f}; all 1 = argmax kept"
                                      if gain is not None else "no cross-check")
    print("decision weights: " + ", ".join(f"{c} {w:.2f}" for c, w in result["weights"].items()) + f" ({why})")
    print("F1 per grade (argmax): " + ", ".join(f"{c} {f:.3f}" for c, f in result["f1_per_grade"].items()))
    print(f"accuracy on rows that repaid something {result['accuracy_repaid']:.4f} ({rated.sum():,} rows), "
          f"on rows that repaid nothing {result['accuracy_nothing_repaid'] or 0:.4f} ({(~rated).sum():,} rows)")
    print(f"fit: {wall:.0f}s wall, {cpu:.0f}s CPU (search + decision rule); load average now "
          f"{os.getloadavg()[0]:.1f}")
    return result


if __name__ == "__main__":
    main()
