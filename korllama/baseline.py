"""The classical baseline: gradient-boosted trees (LightGBM) on the same split and the same features the
prompts carry (the cleaned columns plus the spec's derived ones).

`TreeBaseline` is a scikit-learn estimator (`fit(X, y)`, `predict_proba(X)`, `clone` works, every setting an
`__init__` argument); `table_features(table)` turns a korllama `Table` into its X, and `fit` also takes a Table
as it is (y = its labels, classes = the spec's). Early stopping watches an inner validation part of the rows it
is given (stratified, `validation_fraction`), never rows scored later; those inner rows' probabilities are kept
(`valid_proba_`) so a decision rule can be fitted on them. `search` tries a few settings in a bounded time, says
what each gave and keeps the best by inner-validation macro-F1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from inspect import signature

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from korllama.data import Table


def table_features(table: Table) -> pd.DataFrame:
    """X for the trees: every spec column (categories as strings, numbers as floats) plus the derived features."""
    spec, frame = table.spec, table.frame
    out = {}
    for col in spec.columns:
        values = frame[col.alias]
        if col.parser == "category":
            out[col.alias] = values.astype(object).where(values.notna(), None)
        else:
            out[col.alias] = values.to_numpy(dtype=float, na_value=np.nan)
    for d in spec.derived:
        out[d.alias] = frame[d.alias].to_numpy(dtype=float, na_value=np.nan)
    return pd.DataFrame(out)


def _inner_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified positions (fit, valid) of the rows given to `fit`."""
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    fit_idx, valid_idx = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed,
                                          stratify=stratify)
    return np.sort(fit_idx), np.sort(valid_idx)


class TreeBaseline(ClassifierMixin, BaseEstimator):
    """LightGBM multiclass with early stopping on an inner validation part of the training rows.

    X: a DataFrame (object/category columns become LightGBM categoricals with the categories seen in `fit`; a
    value never seen is missing) or a korllama Table. `classes` fixes the probability columns (a class absent
    from y gets a zero column); by default they are the Table spec's classes, or the sorted labels of y.
    `validation_fraction=0` or `early_stopping_rounds=0` trains all `n_estimators` trees on every row.

    `fine_bins` gives the features it names their own number of histogram bins (the loan table's rates are
    discrete to 0.01%, and neighbouring values can belong to different grades: the trees need to see each one;
    other features keep `max_bin`). `segment_on` names a feature whose missing rows get a model of their own with
    `segment_params` (the loan rows that repaid nothing have no rate: a small, regularised model of their own stops
    them from cutting the rated rows' training short); it applies when both parts have rows enough.
    """

    def __init__(self, n_estimators: int = 3000, learning_rate: float = 0.05, num_leaves: int = 63,
                 max_bin: int = 255, fine_bins: dict | None = None, min_child_samples: int = 20,
                 colsample_bytree: float = 0.8, subsample: float = 1.0, reg_lambda: float = 0.0,
                 early_stopping_rounds: int = 50, validation_fraction: float = 0.1, segment_on: str | None = None,
                 segment_params: dict | None = None, classes: list | None = None, seed: int = 0, n_jobs: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_bin = max_bin
        self.fine_bins = fine_bins
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.subsample = subsample
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.segment_on = segment_on
        self.segment_params = segment_params
        self.classes = classes
        self.seed = seed
        self.n_jobs = n_jobs

    # --- X handling ---------------------------------------------------------------------------------------------
    def _frame(self, X) -> pd.DataFrame:
        frame = table_features(X) if isinstance(X, Table) else pd.DataFrame(X).reset_index(drop=True)
        out = {}
        for name in self.feature_names_:
            values = frame[name]
            if name in self.categories_:
                out[name] = pd.Categorical(values.astype(object).where(values.notna(), None),
                                           categories=self.categories_[name])
            else:
                out[name] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        return pd.DataFrame(out)

    def _segments(self, X_frame: pd.DataFrame) -> np.ndarray:
        """Per row: 0 = the main model, 1 = the model of the rows missing `segment_on`."""
        if not self.segment_on or self.segment_on not in X_frame:
            return np.zeros(len(X_frame), dtype=int)
        return X_frame[self.segment_on].isna().to_numpy().astype(int)

    def _lgbm(self, n_classes: int, **override):
        import lightgbm as lgb

        params = dict(n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
                      max_bin=self.max_bin, min_child_samples=self.min_child_samples,
                      colsample_bytree=self.colsample_bytree, subsample=self.subsample, reg_lambda=self.reg_lambda)
        params.update(override)
        bins = [int((self.fine_bins or {}).get(name, params["max_bin"])) for name in self.feature_names_]
        extra = {"max_bin_by_feature": bins} if any(b != params["max_bin"] for b in bins) else {}
        return lgb.LGBMClassifier(objective="multiclass" if n_classes > 2 else "binary",
                                  subsample_freq=1 if params["subsample"] < 1 else 0, random_state=self.seed,
                                  n_jobs=self.n_jobs, verbose=-1, **params, **extra)

    def _fit_one(self, model, X_fit, y_fit, X_valid, y_valid, progress=None):
        """Fit with early stopping on (X_valid, y_valid) when there are such rows; returns the rounds kept."""
        import lightgbm as lgb

        callbacks = [lambda env: progress(1)] if progress is not None else []
        if X_valid is None or len(y_valid) == 0:
            model.fit(X_fit, y_fit, callbacks=callbacks)
            return model.n_estimators
        # LightGBM 4.7 renamed eval_set to eval_X/eval_y; 4.3..4.6 only know eval_set
        watch = ({"eval_X": (X_valid,), "eval_y": (y_valid,)} if "eval_X" in signature(model.fit).parameters
                 else {"eval_set": [(X_valid, y_valid)]})
        callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        model.fit(X_fit, y_fit, **watch, callbacks=callbacks)
        return int(model.best_iteration_ or model.n_estimators)

    def _xy(self, X, y):
        """(feature frame, labels, IDs or None, classes) of what fit was given: a Table, or X and y."""
        if isinstance(X, Table):
            classes = self.classes if self.classes is not None else list(X.spec.label.classes)
            y = X.labels.to_numpy(dtype=object) if y is None else np.asarray(y, dtype=object)
            return table_features(X), y, X.ids.astype(str).to_numpy(), classes
        if y is None:
            raise ValueError("TreeBaseline.fit needs y unless X is a Table")
        y = np.asarray(y, dtype=object)
        classes = self.classes if self.classes is not None else sorted(set(y.tolist()))
        return pd.DataFrame(X).reset_index(drop=True), y, None, classes

    # --- scikit-learn API ---------------------------------------------------------------------------------------
    def fit(self, X, y=None, progress=None) -> TreeBaseline:
        """Fit on X (a DataFrame with labels y, or a Table); `progress(1)` is called after every boosting round."""
        frame, y, ids, classes = self._xy(X, y)
        self.classes_ = np.asarray(classes, dtype=object)
        index = {c: i for i, c in enumerate(classes)}
        codes = np.asarray([index[v] for v in y])
        self.feature_names_ = [str(c) for c in frame.columns]
        self.categories_ = {str(c): sorted(frame[c].dropna().astype(str).unique())
                            for c in frame.columns
                            if frame[c].dtype == object or isinstance(frame[c].dtype, pd.CategoricalDtype)
                            or pd.api.types.is_string_dtype(frame[c].dtype)}
        X_all = self._frame(frame)
        started = time.perf_counter()

        stop = bool(self.early_stopping_rounds and self.validation_fraction and len(codes) >= 20)
        if stop:
            fit_idx, valid_idx = _inner_split(codes, self.validation_fraction, self.seed)
        else:
            fit_idx, valid_idx = np.arange(len(codes)), np.arange(0)
        segment = self._segments(X_all)
        in_fit, in_valid = np.bincount(segment[fit_idx], minlength=2), np.bincount(segment[valid_idx], minlength=2)
        if in_fit.min() < 50 or (stop and in_valid.min() < 10):
            segment = np.zeros_like(segment)  # too few rows for a model of their own: one model for all
        self.models_, self.best_iterations_, self.fit_rows_ = {}, {}, {}
        for part in np.unique(segment[fit_idx]):
            rows_fit = fit_idx[segment[fit_idx] == part]
            rows_valid = valid_idx[segment[valid_idx] == part]
            rows_valid = rows_valid[np.isin(codes[rows_valid], codes[rows_fit])]  # LightGBM knows only fit labels
            model = self._lgbm(len(np.unique(codes[rows_fit])), **((self.segment_params or {}) if part == 1 else {}))
            self.best_iterations_[int(part)] = self._fit_one(
                model, X_all.iloc[rows_fit], codes[rows_fit], X_all.iloc[rows_valid] if stop else None,
                codes[rows_valid], progress)
            self.models_[int(part)] = model
            self.fit_rows_[int(part)] = len(rows_fit)
        self.model_ = self.models_[0] if 0 in self.models_ else next(iter(self.models_.values()))
        self.best_iteration_ = self.best_iterations_.get(0, next(iter(self.best_iterations_.values())))
        if stop:
            X_valid = X_all.iloc[valid_idx]
            self.valid_index_ = valid_idx
            self.valid_labels_ = self.classes_[codes[valid_idx]]
            self.valid_ids_ = None if ids is None else ids[valid_idx]
            self.valid_proba_ = self._proba(X_valid)
        else:
            self.valid_index_ = self.valid_labels_ = self.valid_ids_ = self.valid_proba_ = None
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def refit_on_all(self, X, y=None, progress=None) -> TreeBaseline:
        """After an early-stopped fit on the same X: each part refitted on all its rows (the inner validation rows
        too) with its kept number of rounds scaled by the rows added, as is usual once the rounds are known.
        `valid_proba_` stays the early-stopped models' (their inner rows are unseen by them: the decision rule is
        fitted there) and `valid_macro_f1()` with it. Measured on the loan table: benchmarks/RESULTS.md."""
        if self.valid_proba_ is None:  # no inner rows were held out: every row was used already
            return self
        frame, y, _, _ = self._xy(X, y)
        X_all = self._frame(frame)
        index = {c: i for i, c in enumerate(self.classes_)}
        codes = np.asarray([index[v] for v in y])
        segment = self._segments(X_all) if len(self.models_) > 1 else np.zeros(len(X_all), dtype=int)
        callbacks = [lambda env: progress(1)] if progress is not None else []
        for part in list(self.models_):
            rows = np.flatnonzero(segment == part)
            rounds = max(1, round(self.best_iterations_[part] * len(rows) / self.fit_rows_[part]))
            model = self._lgbm(len(np.unique(codes[rows])), n_estimators=rounds,
                               **((self.segment_params or {}) if part == 1 else {}))
            model.fit(X_all.iloc[rows], codes[rows], callbacks=callbacks)
            self.models_[part], self.best_iterations_[part], self.fit_rows_[part] = model, rounds, len(rows)
        self.model_ = self.models_[0] if 0 in self.models_ else next(iter(self.models_.values()))
        self.best_iteration_ = self.best_iterations_.get(0, next(iter(self.best_iterations_.values())))
        return self

    def _proba(self, X_frame: pd.DataFrame) -> np.ndarray:
        proba = np.zeros((len(X_frame), len(self.classes_)))
        segment = self._segments(X_frame) if len(self.models_) > 1 else np.zeros(len(X_frame), dtype=int)
        for part, model in self.models_.items():
            rows = np.flatnonzero(segment == part) if len(self.models_) > 1 else np.arange(len(X_frame))
            if len(rows):
                proba[np.ix_(rows, model.classes_)] = model.predict_proba(X_frame.iloc[rows])
        return proba

    def predict_proba(self, X) -> np.ndarray:
        """P(class) per row, columns in `classes_` order (a class absent from the fitting rows: 0)."""
        return self._proba(self._frame(X))

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def valid_macro_f1(self) -> float:
        """Macro-F1 of plain argmax on the inner validation rows (the search's yardstick)."""
        from korllama.decision import _encode, macro_f1_codes

        k = len(self.classes_)
        truth = _encode(self.valid_labels_, list(self.classes_))
        return macro_f1_codes(truth, self.valid_proba_.argmax(axis=1), k)

    def valid_log_loss(self) -> float:
        """Mean log loss of the inner validation rows (printed beside the macro-F1: a steadier figure)."""
        index = {c: i for i, c in enumerate(self.classes_)}
        p = self.valid_proba_[np.arange(len(self.valid_labels_)), [index[c] for c in self.valid_labels_]]
        return float(-np.mean(np.log(np.clip(p, 1e-15, 1))))


# --- the bounded search -----------------------------------------------------------------------------------------

# Tried in this order until the time budget runs out: the default first, so even a short budget gives it.
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
           budget_s: float = 600.0, console=None, say=None) -> SearchResult:
    """Fit `base` with each candidate's settings until `budget_s` would be exceeded; keep the best.

    The yardstick is argmax macro-F1 on the inner validation rows (the same rows for every candidate: the split
    depends only on y, validation_fraction and seed). A candidate is started only while the time spent so far
    plus the slowest fit so far fits in the budget; the first always runs. Progress is a rich bar on `console`,
    and `say(line)` (default: console.print) gets one line per candidate.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
            if i and spent + slowest > budget_s:
                say(f"  skipped {len(candidates) - i} more settings: {spent:.0f}s spent of a {budget_s:.0f}s budget")
                break
            t0 = time.perf_counter()
            progress.reset(rounds, total=None)
            model = clone(base).set_params(**params).fit(X, y, progress=lambda n: progress.advance(rounds, n))
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
    seconds: float


def fit_baseline(fit_on: Table, seed: int = 0, budget_s: float = 600.0, candidates: list[dict] | None = None,
                 console=None, say=None, refit: bool = True) -> FittedBaseline:
    """`korllama baseline`'s model: the bounded search on `fit_on`, then the macro-F1 decision rule fitted on the
    kept model's inner validation rows (a part of `fit_on`, so never the rows scored later), then (`refit`) the
    kept setting refitted on every row of `fit_on` with the rounds early stopping found."""
    from korllama.decision import fit_decision

    started = time.perf_counter()
    base = TreeBaseline(seed=seed, **defaults_for(fit_on))
    found = search(fit_on, base=base, candidates=candidates, budget_s=budget_s, console=console, say=say)
    model = found.best
    if model.valid_proba_ is None:
        from korllama.errors import KorllamaError

        raise KorllamaError("the tree baseline kept no inner validation rows, so no decision rule can be fitted.")
    rule = fit_decision(model.valid_proba_, model.valid_labels_, list(model.classes_), ids=model.valid_ids_)
    if refit:
        t0 = time.perf_counter()
        model.refit_on_all(fit_on)
        from rich.console import Console

        tell = say if say is not None else (console if console is not None else Console(stderr=True)).print
        rounds = "+".join(map(str, model.best_iterations_.values()))
        tell(f"  the kept setting refitted on all {len(fit_on):,} fitting rows ({rounds} rounds), "
             f"{time.perf_counter() - t0:.0f}s")
    return FittedBaseline(model=model, rule=rule, trials=found.trials, seconds=time.perf_counter() - started)
