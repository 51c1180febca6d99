"""The classical baseline: gradient-boosted trees (LightGBM) on the same split and the same features the
prompts carry (the cleaned columns plus the spec's derived ones).

`TreeBaseline` is a scikit-learn classifier that passes sklearn's own estimator checks (tests/test_baseline.py):
`fit(X, y)` on any numeric array or DataFrame (object, string and category columns of a frame are LightGBM
categoricals; missing values are allowed, inf is not), `predict_proba(X)`, every setting an `__init__` argument.
`table_features(table)` (or the `TableFeatures` Pipeline step) turns a korllama `Table` into its X, and `fit` also
takes a Table as it is (y = its labels, classes = the spec's). Early stopping watches an inner validation part of
the rows it is given (stratified, `validation_fraction`), never rows scored later; those inner rows'
probabilities are kept (`valid_proba_`) so a decision rule can be fitted on them. `search` tries a few settings
in a bounded time (baseline/tune.py).
"""

from __future__ import annotations

import copy
import time
from inspect import signature

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from korllama.data import Table
from korllama.decision import macro_f1_codes


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


class TableFeatures(TransformerMixin, BaseEstimator):
    """`table_features` as a Pipeline step: a korllama Table in, its feature frame out (nothing is learnt)."""

    def fit(self, X: Table, y=None) -> TableFeatures:
        self.feature_names_out_ = np.asarray(table_features(_table(X)).columns, dtype=object)
        return self

    def transform(self, X: Table) -> pd.DataFrame:
        check_is_fitted(self)
        return table_features(_table(X))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self)
        return self.feature_names_out_


def _table(X) -> Table:
    if not isinstance(X, Table):
        raise TypeError(f"TableFeatures takes a korllama Table, not {type(X).__name__}")
    return X


def _is_category(dtype) -> bool:
    """A frame column the trees take as categories: strings, objects or a pandas Categorical."""
    return isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)


def _inner_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified positions (fit, valid) of the rows given to `fit`."""
    _, counts = np.unique(y, return_counts=True)
    n_valid = int(np.ceil(fraction * len(y)))  # as train_test_split counts it
    # stratified when every class can be on both sides (a few rows of many classes cannot)
    stratify = y if counts.min() >= 2 and min(n_valid, len(y) - n_valid) >= len(counts) else None
    fit_idx, valid_idx = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed,
                                          stratify=stratify)
    return np.sort(fit_idx), np.sort(valid_idx)


class TreeBaseline(ClassifierMixin, BaseEstimator):
    """LightGBM multiclass with early stopping on an inner validation part of the training rows.

    X: a numeric array, a DataFrame (object/string/category columns become LightGBM categoricals with the
    categories seen in `fit`; a value never seen is missing) or a korllama Table. `classes` fixes the probability
    columns (a class absent from y gets a zero column); by default they are the Table spec's classes, or the
    sorted labels of y. `validation_fraction=0` or `early_stopping_rounds=0` trains all `n_estimators` trees on
    every row. `refit=True`: once early stopping has found the rounds, each model is refitted on all the rows
    (the inner validation rows too) with its rounds scaled by the rows added; `valid_proba_` stays the
    early-stopped models' (their inner rows are unseen by them: a decision rule is fitted there). Measured on the
    loan table: benchmarks/RESULTS.md. `progress`, if given, is called with 1 after every boosting round (a
    progress bar: it changes no result, and a fitted model holding one does not pickle).

    `fine_bins` gives the features it names their own number of histogram bins (the loan table's rates are
    discrete to 0.01%, and neighbouring values can belong to different grades: the trees need to see each one;
    other features keep `max_bin`). `segment_on` names a feature whose missing rows get a model of their own with
    `segment_params` (the loan rows that repaid nothing have no rate: a small, regularised model of their own stops
    them from cutting the rated rows' training short); it applies when both parts have rows enough. Features of
    an X without column names are named x0, x1, ...
    """

    def __init__(self, n_estimators: int = 3000, learning_rate: float = 0.05, num_leaves: int = 63,
                 max_bin: int = 255, fine_bins: dict | None = None, min_child_samples: int = 20,
                 colsample_bytree: float = 0.8, subsample: float = 1.0, reg_lambda: float = 0.0,
                 early_stopping_rounds: int = 50, validation_fraction: float = 0.1, segment_on: str | None = None,
                 segment_params: dict | None = None, classes: list | None = None, refit: bool = False,
                 seed: int = 0, n_jobs: int = 0, progress=None):
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
        self.refit = refit
        self.seed = seed
        self.n_jobs = n_jobs
        self.progress = progress

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # LightGBM sends missing values down a learnt side of each split
        return tags

    # --- X handling ---------------------------------------------------------------------------------------------
    def _validate(self, X, y="no_validation", reset: bool = False):
        """sklearn's checks of X (and y) and of the features' names and count; then the frame the trees see and y.

        A frame with category columns is checked for shape and names as a whole and its number columns on their
        own (finite or missing); any other X must be numeric (sparse, complex, 1-d or empty X are refused)."""
        if isinstance(X, Table):
            X = table_features(X)
        if reset:
            has_categories = isinstance(X, pd.DataFrame) and any(_is_category(t) for t in X.dtypes)
        else:
            has_categories = bool(self.categories_)
        with_y = not (isinstance(y, str) and y == "no_validation")
        if has_categories:
            checked = validate_data(self, X, y, reset=reset, dtype=None, ensure_all_finite=False)
            frame = X.reset_index(drop=True) if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X))
        else:
            checked = validate_data(self, X, y, reset=reset, ensure_all_finite="allow-nan")
            frame = pd.DataFrame(checked[0] if with_y else checked)
        if reset:
            names = getattr(self, "feature_names_in_", [f"x{i}" for i in range(self.n_features_in_)])
            self.feature_names_ = [str(name) for name in names]
            self.categories_ = {name: sorted(frame.iloc[:, i].dropna().astype(str).unique())
                                for i, name in enumerate(self.feature_names_) if _is_category(frame.dtypes.iloc[i])}
        numbers = [i for i, name in enumerate(self.feature_names_) if name not in self.categories_]
        if has_categories and numbers:
            check_array(frame.iloc[:, numbers], ensure_all_finite="allow-nan", input_name="X", estimator=self)
        out = {}
        for i, name in enumerate(self.feature_names_):
            values = frame.iloc[:, i]
            if name in self.categories_:
                out[name] = pd.Categorical(values.astype(object).where(values.notna(), None),
                                           categories=self.categories_[name])
            else:
                out[name] = pd.to_numeric(values).to_numpy(dtype=float, na_value=np.nan)
        return pd.DataFrame(out), (checked[1] if with_y else None)

    def _segments(self, X_frame: pd.DataFrame) -> np.ndarray:
        """Per row: 0 = the main model, 1 = the model of the rows missing `segment_on`."""
        if not self.segment_on or self.segment_on not in X_frame:
            return np.zeros(len(X_frame), dtype=int)
        return X_frame[self.segment_on].isna().to_numpy().astype(int)

    def _lgbm(self, n_classes: int, **override):
        params = dict(n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
                      max_bin=self.max_bin, min_child_samples=self.min_child_samples,
                      colsample_bytree=self.colsample_bytree, subsample=self.subsample, reg_lambda=self.reg_lambda)
        params.update(override)
        bins = [int((self.fine_bins or {}).get(name, params["max_bin"])) for name in self.feature_names_]
        extra = {"max_bin_by_feature": bins} if any(b != params["max_bin"] for b in bins) else {}
        return lgb.LGBMClassifier(objective="multiclass" if n_classes > 2 else "binary",
                                  subsample_freq=1 if params["subsample"] < 1 else 0, random_state=self.seed,
                                  n_jobs=self.n_jobs, verbose=-1, **params, **extra)

    def _callbacks(self) -> list:
        progress = self.progress
        return [lambda env: progress(1)] if progress is not None else []

    def _fit_one(self, model, X_fit, y_fit, X_valid, y_valid):
        """Fit with early stopping on (X_valid, y_valid) when there are such rows; returns the rounds kept."""
        callbacks = self._callbacks()
        if X_valid is None or len(y_valid) == 0:
            model.fit(X_fit, y_fit, callbacks=callbacks)
            return model.n_estimators
        # LightGBM 4.7 renamed eval_set to eval_X/eval_y; 4.3..4.6 only know eval_set
        watch = ({"eval_X": (X_valid,), "eval_y": (y_valid,)} if "eval_X" in signature(model.fit).parameters
                 else {"eval_set": [(X_valid, y_valid)]})
        callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        model.fit(X_fit, y_fit, **watch, callbacks=callbacks)
        return int(model.best_iteration_ or model.n_estimators)

    def _codes(self, y: np.ndarray) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes_)}
        unknown = sorted({str(v) for v in y if v not in index})
        if unknown:
            raise ValueError(f"y has labels that are not in classes: {', '.join(unknown[:5])}")
        return np.fromiter((index[v] for v in y), dtype=int, count=len(y))

    # --- scikit-learn API ---------------------------------------------------------------------------------------
    def fit(self, X, y=None) -> TreeBaseline:
        """Fit on X with labels y, or on a Table (y: its labels unless given)."""
        table = X if isinstance(X, Table) else None
        if table is not None and y is None:
            y = table.labels.to_numpy(dtype=object)
        X_all, y = self._validate(X, y, reset=True)
        check_classification_targets(y)
        seen = np.unique(y)
        if len(seen) < 2:
            raise ValueError(f"TreeBaseline needs at least 2 classes in y; got 1 class ({seen[0]!r})")
        classes = self.classes if self.classes is not None else (table.spec.label.classes if table else None)
        self.classes_ = seen if classes is None else np.asarray(list(classes), dtype=object)
        codes = self._codes(y)
        ids = table.ids.astype(str).to_numpy() if table is not None else None
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
                codes[rows_valid])
            self.models_[int(part)] = model
            self.fit_rows_[int(part)] = len(rows_fit)
        self._keep_first()
        if stop:
            X_valid = X_all.iloc[valid_idx]
            self.valid_index_ = valid_idx
            self.valid_labels_ = self.classes_[codes[valid_idx]]
            self.valid_ids_ = None if ids is None else ids[valid_idx]
            self.valid_proba_ = self._proba(X_valid)
            if self.refit:
                self._refit_all(X_all, codes)
        else:
            self.valid_index_ = self.valid_labels_ = self.valid_ids_ = self.valid_proba_ = None
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _keep_first(self) -> None:
        self.model_ = self.models_[0] if 0 in self.models_ else next(iter(self.models_.values()))
        self.best_iteration_ = self.best_iterations_.get(0, next(iter(self.best_iterations_.values())))

    def _refit_all(self, X_all: pd.DataFrame, codes: np.ndarray) -> None:
        """`refit`: each part's model refitted on all its rows with its kept rounds scaled by the rows added."""
        segment = self._segments(X_all) if len(self.models_) > 1 else np.zeros(len(X_all), dtype=int)
        for part in list(self.models_):
            rows = np.flatnonzero(segment == part)
            rounds = max(1, round(self.best_iterations_[part] * len(rows) / self.fit_rows_[part]))
            model = self._lgbm(len(np.unique(codes[rows])), n_estimators=rounds,
                               **((self.segment_params or {}) if part == 1 else {}))
            model.fit(X_all.iloc[rows], codes[rows], callbacks=self._callbacks())
            self.models_[part], self.best_iterations_[part], self.fit_rows_[part] = model, rounds, len(rows)
        self._keep_first()

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
        check_is_fitted(self)
        return self._proba(self._validate(X)[0])

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # first: it says NotFittedError before fit
        return self.classes_[proba.argmax(axis=1)]

    def valid_macro_f1(self) -> float:
        """Macro-F1 of plain argmax on the inner validation rows (the search's yardstick)."""
        k = len(self.classes_)
        truth = self._codes(self.valid_labels_)  # the labels fit coded: each is one of classes_
        return macro_f1_codes(truth, self.valid_proba_.argmax(axis=1), k)

    def valid_log_loss(self) -> float:
        """Mean log loss of the inner validation rows (printed beside the macro-F1: a steadier figure)."""
        return float(log_loss(self.valid_labels_, self.valid_proba_, labels=list(self.classes_)))


def refit_on_all(model: TreeBaseline, X, y=None) -> TreeBaseline:
    """A new estimator: `model` (fitted with `refit=False` on X, y) as `fit` with `refit=True` leaves it, without
    fitting the early-stopped models again. `model` itself is unchanged."""
    check_is_fitted(model)
    new = copy.deepcopy(model).set_params(refit=True)
    if model.refit or model.valid_proba_ is None:  # refitted already, or no inner rows held out: all rows used
        return new
    if y is None and isinstance(X, Table):
        y = X.labels.to_numpy(dtype=object)
    X_all, y = new._validate(X, y)
    if len(y) != sum(model.fit_rows_.values()) + len(model.valid_index_):
        raise ValueError(f"refit_on_all needs the {sum(model.fit_rows_.values()) + len(model.valid_index_)} rows "
                         f"the model was fitted on, not {len(y)}")
    new._refit_all(X_all, new._codes(y))
    return new
