"""The baseline's bounded search: a few settings tried in a bounded time, each said, the best by inner-validation
macro-F1 kept (`search`); `fit_baseline` adds the decision rule and the refit on every fitting row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.base import clone

from korllama.baseline.estimator import TreeBaseline, refit_on_all
from korllama.data import Table
from korllama.decision import fit_decision
from korllama.errors import KorllamaError

# Tried in this order, all of them by default (the same command gives the same trees); with a time budget, until it
# runs out: the default first, so even a short budget gives it.
CANDIDATES: list[dict] = [
    {},
    {"num_leaves": 127, "min_child_samples": 10},
    {"colsample_bytree": 0.5},
    {"learning_rate": 0.1},
]
FINE_BINS = 8191  # histogram bins of the derived features (the rates are discrete to 0.01%)
SEGMENT_PARAMS = {"num_leaves": 15, "min_child_samples": 50, "reg_lambda": 5.0}  # the rows missing segment_on


def defaults_for(table: Table) -> dict:
    """The settings `korllama baseline` starts from for a table: fine bins for every derived feature, and a model
    of their own for the rows missing the first derived feature that is missing on at least 1% of the rows (on
    the loan table: interest / principal repaid, i.e. the rows that repaid nothing and so have no rate)."""
    derived = [d.alias for d in table.spec.derived]
    segment_on = next((name for name in derived if table.frame[name].isna().mean() >= 0.01), None)
    return {"fine_bins": {name: FINE_BINS for name in derived}, "segment_on": segment_on,
            "segment_params": dict(SEGMENT_PARAMS) if segment_on else None}


@dataclass
class SearchResult:
    best: TreeBaseline
    trials: list[dict] = field(default_factory=list)  # params, valid_macro_f1, iterations, seconds, kept


def search(X, y=None, base: TreeBaseline | None = None, candidates: list[dict] | None = None,
           budget_s: float | None = None, console=None, say=None) -> SearchResult:
    """Fit `base` with each candidate's settings (with `budget_s`, until it would be exceeded); keep the best.

    No budget by default: which settings are tried must not depend on how busy the machine is (issue 31), so the
    figure of the same command is the same; a budget is the user's trade of that for time.

    The yardstick is argmax macro-F1 on the inner validation rows (the same rows for every candidate: the split
    depends only on y, validation_fraction and seed). A candidate is started only while the time spent so far
    plus the slowest fit so far fits in the budget; the first always runs. Progress is a rich bar on `console`,
    and `say(line)` (default: console.print) gets one line per candidate.
    """

    base = base if base is not None else TreeBaseline()
    candidates = CANDIDATES if candidates is None else candidates
    console = console if console is not None else Console(stderr=True)
    say = say if say is not None else console.print
    trials, best, kept, slowest = [], None, -1, 0.0
    started = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[unit]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("tree search", total=len(candidates), unit="settings")
        rounds = progress.add_task("  boosting", total=None, unit="rounds")
        for i, params in enumerate(candidates):
            spent = time.perf_counter() - started
            if budget_s is not None and i and spent + slowest > budget_s:
                say(f"  skipped {len(candidates) - i} more settings: {spent:.0f}s spent of a {budget_s:.0f}s budget")
                break
            t0 = time.perf_counter()
            progress.reset(rounds, total=None)
            model = clone(base).set_params(**params, progress=lambda n: progress.advance(rounds, n)).fit(X, y)
            model.set_params(progress=None)  # the bar is done; the kept model must not hold it (nor fail to pickle)
            seconds = time.perf_counter() - t0
            slowest = max(slowest, seconds)
            score = model.valid_macro_f1() if model.valid_proba_ is not None else float("nan")
            loss = model.valid_log_loss() if model.valid_proba_ is not None else float("nan")
            trees = "+".join(str(n) for n in model.best_iterations_.values())
            trial = {"params": dict(params), "valid_macro_f1": score, "valid_log_loss": loss,
                     "iterations": model.best_iteration_, "trees": trees, "seconds": seconds}
            trials.append(trial)
            shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
            say(f"  [{i + 1}/{len(candidates)}] {shown}: inner-validation macro-F1 {score:.4f}, log loss "
                f"{loss:.4f}, {trees} rounds, {seconds:.0f}s")
            if best is None or score > trials[kept]["valid_macro_f1"]:
                best, kept = model, i
            progress.advance(task)
    for i, trial in enumerate(trials):
        trial["kept"] = i == kept
    return SearchResult(best=best, trials=trials)


@dataclass
class FittedBaseline:
    model: TreeBaseline
    rule: object  # korllama.decision.DecisionRule, fitted on the model's inner validation rows
    trials: list[dict]
    seconds: float  # wall time of the search, the rule and the refit
    cpu_seconds: float  # their CPU time in this process (time.process_time(): LightGBM's threads included)


def fit_baseline(fit_on: Table, seed: int = 0, budget_s: float | None = None, candidates: list[dict] | None = None,
                 console=None, say=None, refit: bool = True) -> FittedBaseline:
    """`korllama baseline`'s model: the bounded search on `fit_on`, then the macro-F1 decision rule fitted on the
    kept model's inner validation rows (a part of `fit_on`, so never the rows scored later), then (`refit`) the
    kept setting refitted on every row of `fit_on` with the rounds early stopping found."""

    started, cpu_started = time.perf_counter(), time.process_time()
    base = TreeBaseline(seed=seed, **defaults_for(fit_on))
    found = search(fit_on, base=base, candidates=candidates, budget_s=budget_s, console=console, say=say)
    model = found.best
    if model.valid_proba_ is None:
        raise KorllamaError("the tree baseline kept no inner validation rows, so no decision rule can be fitted.")
    rule = fit_decision(model.valid_proba_, model.valid_labels_, list(model.classes_), ids=model.valid_ids_)
    if refit:
        t0 = time.perf_counter()
        model = refit_on_all(model, fit_on)
        tell = say if say is not None else (console if console is not None else Console(stderr=True)).print
        rounds = "+".join(map(str, model.best_iterations_.values()))
        tell(f"  the kept setting refitted on all {len(fit_on):,} fitting rows ({rounds} rounds), "
             f"{time.perf_counter() - t0:.0f}s")
    return FittedBaseline(model=model, rule=rule, trials=found.trials, seconds=time.perf_counter() - started,
                          cpu_seconds=time.process_time() - cpu_started)
