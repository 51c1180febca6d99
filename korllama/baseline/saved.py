"""A fitted `TreeBaseline` on disk and back, without pickle: each LightGBM model in LightGBM's own text format
(`Booster.model_to_string`: its trees up to the best iteration, and the pandas categories it was fitted with), and
what the estimator needs around them (its settings, the feature names, each categorical feature's categories, the
classes and which class codes each model knows) as JSON. Loading gives back an estimator whose `predict_proba` is the
fitted one's (tests/test_trees.py compares them on the same rows); a text file is data, never code.

    FOLDER/estimator.json   settings, features, categories, classes, parts (file, class codes, rounds, rows)
    FOLDER/part-0.txt       the main model; part-1.txt the model of the rows missing `segment_on`, when there is one
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np

from korllama.baseline.estimator import TreeBaseline
from korllama.errors import KorllamaError
from korllama.io import write_text

ESTIMATOR_FILE = "estimator.json"
FORMAT = 1  # estimator.json's layout; a later korllama that changes it says so


class SavedModel:
    """One part's LightGBM model read back from its text: `predict_proba` as LGBMClassifier's (binary: two columns)."""

    def __init__(self, booster: lgb.Booster, classes: list[int]):
        self.booster_ = booster
        self.classes_ = np.asarray(classes, dtype=int)

    def predict_proba(self, X) -> np.ndarray:
        p = self.booster_.predict(X)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p


def save_trees(model: TreeBaseline, folder: str | Path) -> list[Path]:
    """Write the fitted `model` into `folder` (created); returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts, written = {}, []
    for part, fitted in model.models_.items():
        name = f"part-{part}.txt"
        booster = fitted.booster_ if hasattr(fitted, "booster_") else fitted
        write_text(folder / name, booster.model_to_string())
        written.append(folder / name)
        parts[str(part)] = {"file": name, "classes": [int(c) for c in fitted.classes_],
                            "rounds": int(model.best_iterations_[part]), "rows": int(model.fit_rows_[part])}
    settings = {k: v for k, v in model.get_params().items() if k != "progress"}
    record = {"format": FORMAT, "settings": settings, "features": model.feature_names_,
              "categories": model.categories_, "classes": [str(c) for c in model.classes_], "parts": parts,
              "fit_seconds": float(getattr(model, "fit_seconds_", 0.0))}
    write_text(folder / ESTIMATOR_FILE, json.dumps(record, indent=1, ensure_ascii=False))
    written.append(folder / ESTIMATOR_FILE)
    return written


def load_trees(folder: str | Path) -> TreeBaseline:
    """The estimator `save_trees` wrote into `folder`, ready to `predict_proba` (not to be fitted further)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / ESTIMATOR_FILE).read_text("utf-8"))
        if record.get("format") != FORMAT:
            raise KorllamaError(f"{folder / ESTIMATOR_FILE} is format {record.get('format')!r}, and this korllama "
                                f"reads format {FORMAT}; fit the trees again with `korllama baseline`.")
        model = TreeBaseline(**record["settings"])
        model.feature_names_ = list(record["features"])
        model.feature_names_in_ = np.asarray(model.feature_names_, dtype=object)
        model.n_features_in_ = len(model.feature_names_)
        model.categories_ = {k: list(v) for k, v in record["categories"].items()}
        model.classes_ = np.asarray(record["classes"], dtype=object)
        model.models_, model.best_iterations_, model.fit_rows_ = {}, {}, {}
        for key, part in record["parts"].items():
            text = (folder / Path(part["file"]).name).read_text("utf-8")
            model.models_[int(key)] = SavedModel(lgb.Booster(model_str=text), part["classes"])
            model.best_iterations_[int(key)] = int(part["rounds"])
            model.fit_rows_[int(key)] = int(part["rows"])
    except (OSError, ValueError, KeyError, TypeError, lgb.basic.LightGBMError) as exc:
        raise KorllamaError(f"{folder} does not hold trees korllama can read ({type(exc).__name__}: {exc}); fit "
                            "them again with `korllama baseline`.") from None
    model._keep_first()
    model.valid_index_ = model.valid_labels_ = model.valid_ids_ = model.valid_proba_ = None
    model.fit_seconds_ = float(record.get("fit_seconds", 0.0))
    return model
