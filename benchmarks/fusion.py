"""Does the LLM add to the trees? LLM-Boost, stacking and blends, cross-fitted, with paired bootstrap intervals.

    PYTHONPATH=. python benchmarks/fusion.py --data ../shared/data/dacon-loan/train.csv --out /tmp/fusion \\
        --config dacon-tiny train.epochs=2 'prompt.fields=[term,schedule_rate]'

The rows: `korllama train`'s split of the table (stratified 80/20, the config's seed). Every figure is on the 20%
held-out rows; nothing below is fitted on them. The LLM's scores of the 80% fitting rows are **cross-fitted**: the
fitting rows are cut into `--folds` stratified folds, one LLM run (`korllama.train` of the config with its overrides)
is trained on the other folds and scores its own fold, so no LLM probability used to fit a combination comes from a
model that trained on that row. The held-out rows get the mean log-probability of the fold runs. The runs stay in
OUT/llm-fold-K (a second call reuses finished ones).

Systems, each fitted on the fitting rows only:
- trees: korllama's baseline estimator (`TreeBaseline` with `korllama baseline`'s defaults: every column, fine bins
  for the derived rates, a model of their own for rows without a rate), refit=False;
- trees (LightGBM): plain LightGBM with the same settings and no segment model: the LLM-Boost's own zero point;
- LLM: the cross-fitted LLM alone (argmax);
- blend: alpha * log P(trees) + (1 - alpha) * log P(LLM), alpha fitted on the trees' inner validation rows;
- stacking: a multinomial logistic regression on [log P(trees), log P(LLM)], fitted on those inner validation rows
  (unseen by the early-stopped trees, and by the LLM through cross-fitting);
- LLM as features: the trees given the LLM's seven log-probabilities as extra columns;
- LLM-Boost (Chen et al. 2025): LightGBM whose starting scores are w * log P(LLM), w chosen among --weights by the
  inner validation rows' macro-F1.

For each, held-out macro-F1 and accuracy, and the paired bootstrap (--resamples resamples of the held-out rows) 95%
interval of its macro-F1 minus the trees'. A fused system "wins" only if that interval excludes 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from korllama.baseline.estimator import TreeBaseline, table_features
from korllama.baseline.tune import defaults_for
from korllama.config import load_config
from korllama.data import read_table, split
from korllama.layout import RunDir
from korllama.run import Run
from korllama.scoring import score
from korllama.training.recipe import train


def llm_log_proba(run_dir: Path, tables: list) -> list[np.ndarray]:
    run = Run.load(run_dir)
    return [np.log(np.clip(score(run.model, run.tokenizer, run.template.render(t), run.classes, batch_size=256),
                           1e-12, None)) for t in tables]


def cross_fitted_llm(config_name: str, overrides: list[str], fitting, held, folds: int, out: Path, seed: int):
    """(out-of-fold log P on the fitting rows, mean log P of the fold runs on the held-out rows, CPU seconds)."""
    oof = np.zeros((len(fitting), len(fitting.spec.label.classes)))
    held_sum = np.zeros((len(held), oof.shape[1]))
    cpu = 0.0
    cut = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for k, (fit_idx, own_idx) in enumerate(cut.split(np.zeros(len(fitting)), fitting.labels)):
        run_dir = out / f"llm-fold-{k}"
        t0 = time.process_time()
        if not RunDir(run_dir).finished:
            config = load_config(config_name, overrides)
            train(config, run_dir, table=fitting.subset(np.sort(fit_idx)), overwrite=True)
        own, held_lp = llm_log_proba(run_dir, [fitting.subset(np.sort(own_idx)), held])
        cpu += time.process_time() - t0
        oof[np.sort(own_idx)] = own
        held_sum += held_lp
        print(f"fold {k}: trained on {len(fit_idx):,} rows, scored its own {len(own_idx):,} and the "
              f"{len(held):,} held-out rows", flush=True)
    return oof, log_softmax(held_sum / folds, axis=1), cpu


def boosted(trees: TreeBaseline, X_fit, y_fit, X_valid, y_valid, X_held, init_fit, init_valid, init_held):
    """Plain LightGBM with `trees`' settings (no segment model) started from the given scores; (valid proba, held
    proba)."""
    p = trees.get_params()
    bins = [int((p["fine_bins"] or {}).get(name, p["max_bin"])) for name in X_fit.columns]
    model = lgb.LGBMClassifier(objective="multiclass", n_estimators=p["n_estimators"], learning_rate=p["learning_rate"],
                               num_leaves=p["num_leaves"], min_child_samples=p["min_child_samples"],
                               colsample_bytree=p["colsample_bytree"], reg_lambda=p["reg_lambda"],
                               max_bin_by_feature=bins, random_state=p["seed"], verbose=-1)
    model.fit(X_fit, y_fit, init_score=init_fit, eval_X=(X_valid,), eval_y=(y_valid,), eval_init_score=[init_valid],
              callbacks=[lgb.early_stopping(p["early_stopping_rounds"], verbose=False)])

    def proba(X, init):
        raw = model.predict(X, raw_score=True, num_iteration=model.best_iteration_)
        return np.exp(log_softmax(raw + init, axis=1))

    return proba(X_valid, init_valid), proba(X_held, init_held)


def bootstrap_gain(truth, base_pred, pred, resamples: int, seed: int) -> tuple[float, float, float]:
    """Macro-F1 of pred minus base_pred on the held-out rows, and its paired bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    gains = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, n, n)
        gains[i] = (f1_score(truth[rows], pred[rows], average="macro")
                    - f1_score(truth[rows], base_pred[rows], average="macro"))
    point = f1_score(truth, pred, average="macro") - f1_score(truth, base_pred, average="macro")
    low, high = np.percentile(gains, [2.5, 97.5])
    return point, float(low), float(high)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default="dacon-tiny")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--weights", default="0.25,0.5,1.0", help="LLM-Boost's candidate weights of log P(LLM)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a `korllama baseline` evaluation folder of the same held-out rows: its predictions.csv "
                             "is compared too (the searched and refitted trees)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the LLM's config")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    config = load_config(args.config, args.overrides)
    table = read_table(args.data)
    fitting, held, _ = split(table, config.data.valid_fraction, config.data.split_seed)
    classes = list(table.spec.label.classes)
    y_fit = fitting.labels.to_numpy(dtype=object)
    truth = held.labels.to_numpy(dtype=object)
    code = {c: i for i, c in enumerate(classes)}
    print(f"{len(fitting):,} fitting rows, {len(held):,} held-out rows; LLM: {args.config} {' '.join(args.overrides)}",
          flush=True)

    llm_fit, llm_held, llm_cpu = cross_fitted_llm(args.config, args.overrides, fitting, held, args.folds, args.out,
                                                  args.seed)

    # the trees as korllama baseline fits them (no search, no refit), and their inner validation rows
    t0 = time.process_time()
    defaults = defaults_for(fitting)
    trees = TreeBaseline(seed=args.seed, **defaults).fit(fitting)
    trees_cpu = time.process_time() - t0
    valid = trees.valid_index_
    tree_valid, tree_held = np.log(np.clip(trees.valid_proba_, 1e-12, None)), np.log(
        np.clip(trees.predict_proba(held), 1e-12, None))
    y_codes = np.array([code[c] for c in y_fit])
    y_valid = y_codes[valid]
    systems: dict[str, np.ndarray] = {"trees": tree_held, "LLM (cross-fitted)": llm_held}
    notes: dict[str, str] = {"trees": f"{trees_cpu:.0f} CPU s", "LLM (cross-fitted)": f"{llm_cpu:.0f} CPU s"}

    def valid_f1(log_p) -> float:
        return f1_score(y_valid, log_p.argmax(axis=1), average="macro")

    alphas = np.linspace(0, 1, 21)
    alpha = max(alphas, key=lambda a: valid_f1(a * tree_valid + (1 - a) * llm_fit[valid]))
    systems["blend"] = alpha * tree_held + (1 - alpha) * llm_held
    notes["blend"] = f"alpha {alpha:.2f}"

    stack = LogisticRegression(max_iter=2000, C=1.0).fit(np.hstack([tree_valid, llm_fit[valid]]), y_valid)
    systems["stacking"] = stack.predict_log_proba(np.hstack([tree_held, llm_held]))
    notes["stacking"] = f"fitted on the trees' {len(valid):,} inner validation rows"

    llm_columns = [f"llm_logp_{c}" for c in classes]
    with_llm = TreeBaseline(seed=args.seed, **defaults).fit(
        pd.concat([table_features(fitting), pd.DataFrame(llm_fit, columns=llm_columns)], axis=1), y_fit)
    systems["LLM as features"] = np.log(np.clip(with_llm.predict_proba(
        pd.concat([table_features(held), pd.DataFrame(llm_held, columns=llm_columns)], axis=1)), 1e-12, None))

    # the trees' own frames (their categories) and their own inner split, so LLM-Boost fits and stops on the same rows
    X_all, X_held = trees._validate(fitting)[0], trees._validate(held)[0]
    valid_rows, fit_rows = valid, np.setdiff1d(np.arange(len(fitting)), valid)
    best = None
    for w in [0.0, *[float(x) for x in args.weights.split(",")]]:
        t0 = time.process_time()
        pv, ph = boosted(trees, X_all.iloc[fit_rows], y_codes[fit_rows], X_all.iloc[valid_rows], y_codes[valid_rows],
                         X_held, w * llm_fit[fit_rows], w * llm_fit[valid_rows], w * llm_held)
        f1v = f1_score(y_codes[valid_rows], pv.argmax(axis=1), average="macro")
        print(f"LLM-Boost w={w}: inner-validation macro-F1 {f1v:.4f} ({time.process_time() - t0:.0f} CPU s)",
              flush=True)
        if w == 0.0:
            systems["trees (LightGBM, w=0)"] = np.log(ph)
        elif best is None or f1v > best[0]:
            best = (f1v, w, ph)
    systems["LLM-Boost"] = np.log(best[2])
    notes["LLM-Boost"] = f"w {best[1]} (inner-validation macro-F1 {best[0]:.4f})"

    if args.baseline is not None:  # the shipped baseline's own probabilities, matched by ID
        shipped = pd.read_csv(args.baseline / "predictions.csv", keep_default_na=False).set_index("ID")
        shipped = shipped.loc[held.ids.astype(str).to_numpy(), [f"P_{c}" for c in classes]].to_numpy(float)
        systems["trees (korllama baseline: searched, refitted)"] = np.log(np.clip(shipped, 1e-12, None))

    base_pred = systems["trees"].argmax(axis=1)
    truth_codes = np.array([code[c] for c in truth])
    rows = []
    print("\n| system | held-out macro-F1 | accuracy | minus the trees' macro-F1 [95% paired bootstrap] | notes |")
    print("| --- | --- | --- | --- | --- |")
    for name, log_p in systems.items():
        pred = log_p.argmax(axis=1)
        f1 = f1_score(truth_codes, pred, average="macro")
        acc = accuracy_score(truth_codes, pred)
        gain, low, high = bootstrap_gain(truth_codes, base_pred, pred, args.resamples, args.seed)
        rows.append({"system": name, "macro_f1": f1, "accuracy": acc, "gain": gain, "low": low, "high": high,
                     "note": notes.get(name, "")})
        shown = "" if name == "trees" else f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]"
        print(f"| {name} | {f1:.4f} | {acc:.4f} | {shown} | {notes.get(name, '')} |", flush=True)
    (args.out / "fusion.json").write_text(json.dumps({"held_out_rows": len(held), "config": args.config,
                                                      "overrides": args.overrides, "folds": args.folds,
                                                      "systems": rows}, indent=2))


if __name__ == "__main__":
    main()
