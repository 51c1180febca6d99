"""The classical baseline: gradient-boosted trees (LightGBM) on the same split and the same features the
prompts carry (the cleaned columns plus the derived ones). One object, scikit-learn style: fit / predict_proba.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from korllama.data import Table


class TreeBaseline:
    """LightGBM multiclass on a Table's columns; category columns as LightGBM categoricals."""

    def __init__(self, n_estimators: int = 800, learning_rate: float = 0.05, num_leaves: int = 127,
                 max_bin: int = 8191, seed: int = 0, n_jobs: int = 0):
        # many bins: the implied rate is discrete to 0.01%, and the trees need to see each value
        self.params = dict(n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves,
                           max_bin=max_bin, min_child_samples=5, random_state=seed, n_jobs=n_jobs, verbose=-1)

    def features(self, table: Table) -> pd.DataFrame:
        spec = table.spec
        out = {}
        for col in spec.columns:
            values = table.frame[col.alias]
            if col.parser == "category":
                out[col.alias] = pd.Categorical(values, categories=self.categories_[col.alias])
            else:
                out[col.alias] = values.to_numpy(dtype=float, na_value=np.nan)
        for d in spec.derived:
            out[d.alias] = table.frame[d.alias].to_numpy(dtype=float, na_value=np.nan)
        return pd.DataFrame(out)

    def fit(self, table: Table) -> TreeBaseline:
        import lightgbm as lgb

        self.classes_ = list(table.spec.label.classes)
        self.categories_ = {c.alias: sorted(table.frame[c.alias].dropna().unique())
                            for c in table.spec.columns if c.parser == "category"}
        y = table.labels.map({c: i for i, c in enumerate(self.classes_)}).to_numpy()
        self.model_ = lgb.LGBMClassifier(objective="multiclass", **self.params)
        self.model_.fit(self.features(table), y)
        return self

    def predict_proba(self, table: Table) -> np.ndarray:
        proba = np.zeros((len(table), len(self.classes_)))
        proba[:, self.model_.classes_] = self.model_.predict_proba(self.features(table))
        return proba

    def predict(self, table: Table) -> np.ndarray:
        return np.asarray(self.classes_, dtype=object)[self.predict_proba(table).argmax(axis=1)]
