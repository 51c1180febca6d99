"""The classical baseline: estimator.py (`TreeBaseline`, a scikit-learn classifier, and `TableFeatures`),
tune.py (the bounded search `search`, and `fit_baseline`), command.py (`run_baseline`: `korllama baseline`)."""

from korllama.baseline.estimator import TableFeatures, TreeBaseline, refit_on_all, table_features
from korllama.baseline.tune import defaults_for, fit_baseline, search

__all__ = ["TableFeatures", "TreeBaseline", "defaults_for", "fit_baseline", "refit_on_all", "search",
           "table_features"]
