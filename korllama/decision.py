"""A decision rule for macro-F1: per-class weights on the probabilities, label = argmax(p * w).

Macro-F1 weighs every grade alike, so the rare grades (F 2%, G 0.4% of the loan table) count as much as B; the
argmax of calibrated probabilities under-predicts them. `fit_decision` chooses one weight per class by coordinate
ascent on *validation* rows (the weights that maximise their macro-F1) and `DecisionRule.apply` uses them.

The rule remembers which rows it was fitted on (`fitted_ids`, when given), so whoever judges it can check that it
never saw the rows it is judged on: `rule.check_unseen(ids)` raises if any of them was a fitting row. Stored as
JSON (`decision.json`) beside the model it belongs to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from korllama.choices import Decision
from korllama.errors import KorllamaError
from korllama.io import write_text
from korllama.layout import DECISION_FILE


def decision_choice(name: str) -> Decision:
    """`name` as a Decision; anything else is one sentence naming the choices."""
    try:
        return Decision(name)
    except ValueError:
        raise KorllamaError(f"--decision must be one of {', '.join(Decision)}, not {name!r}.") from None

# Fewer validation rows of any class than this: the rule stays argmax. Measured: SmolLM2's rule fitted on 300
# validation rows (G: 1 row, F: 6) passed the cross-check below and then lost 0.09 macro-F1 on 2,000 new rows.
MIN_CLASS_ROWS = 20
GRID = np.exp(np.linspace(np.log(1 / 8), np.log(8), 49))  # multipliers tried for one weight in one pass


@dataclass
class DecisionRule:
    """label = classes[argmax(proba * weights)]; weights all 1 is plain argmax."""

    classes: list[str]
    weights: list[float]
    fitted_ids: list[str] | None = None  # the rows it was fitted on, when the caller said
    fitted_rows: int = 0
    valid_macro_f1: dict = field(default_factory=dict)  # {"argmax": .., "decision": ..} on the fitting rows
    cross_checked_gain: float | None = None  # mean macro-F1 gain on left-out folds of the fitting rows
    argmax_kept: str | None = None  # why no weights were fitted, when a class had too few rows

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Labels (object array) for probabilities whose columns follow `classes`."""
        proba = np.asarray(proba, dtype=float)
        if proba.ndim != 2 or proba.shape[1] != len(self.classes):
            raise KorllamaError(f"the decision rule has {len(self.classes)} classes ({', '.join(self.classes)}); "
                                f"the probabilities have shape {proba.shape}.")
        return np.asarray(self.classes, dtype=object)[(proba * np.asarray(self.weights)).argmax(axis=1)]

    def check_unseen(self, ids) -> None:
        """Raise if any of `ids` is a row the rule was fitted on (a rule is never judged on its own rows)."""
        if self.fitted_ids is None:
            return
        seen = set(map(str, self.fitted_ids)) & set(map(str, ids))
        if seen:
            example = ", ".join(sorted(seen)[:3])
            raise KorllamaError(f"the decision rule was fitted on {len(seen):,} of the rows it is asked to judge "
                                f"(e.g. {example}): fit it on validation rows that are not scored.")

    def to_dict(self) -> dict:
        return {"rule": "macro-f1", "classes": list(self.classes), "weights": [float(w) for w in self.weights],
                "fitted_rows": int(self.fitted_rows), "valid_macro_f1": self.valid_macro_f1,
                "cross_checked_gain": self.cross_checked_gain, "argmax_kept": self.argmax_kept,
                "fitted_ids": None if self.fitted_ids is None else [str(i) for i in self.fitted_ids]}

    @classmethod
    def from_dict(cls, d: dict) -> DecisionRule:
        return cls(classes=list(d["classes"]), weights=[float(w) for w in d["weights"]],
                   fitted_ids=d.get("fitted_ids"), fitted_rows=int(d.get("fitted_rows", 0)),
                   valid_macro_f1=dict(d.get("valid_macro_f1") or {}),
                   cross_checked_gain=d.get("cross_checked_gain"), argmax_kept=d.get("argmax_kept"))

    def save(self, path: str | Path) -> Path:
        """Write the rule as JSON; `path` may be a folder (then FOLDER/decision.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / DECISION_FILE
        write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> DecisionRule:
        """Read a rule written by `save`; `path` may be the folder that holds decision.json."""
        path = Path(path)
        if path.is_dir():
            path = path / DECISION_FILE
        if not path.is_file():
            raise KorllamaError(f"{path} does not exist: no decision rule was stored there "
                                "(it is fitted on validation rows when the model is trained).")
        try:
            return cls.from_dict(json.loads(path.read_text("utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise KorllamaError(f"{path} is not a decision rule ({exc}).") from exc


def _encode(truth, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index.get(t, -1) for t in truth], dtype=int)


def macro_f1_codes(truth: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Macro-F1 over classes 0..k-1 from integer codes (fast: one bincount); truth -1 counts as always wrong."""
    valid = truth >= 0
    tp = np.bincount(truth[valid & (truth == pred)], minlength=k)[:k]
    n_true = np.bincount(truth[valid], minlength=k)[:k]
    n_pred = np.bincount(pred, minlength=k)[:k]
    denom = n_true + n_pred
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1.mean())


def _ascend(proba: np.ndarray, y: np.ndarray, k: int, rounds: int, grid: np.ndarray) -> tuple[np.ndarray, float]:
    """Coordinate ascent from all-ones weights: (weights, macro-F1 they reach on these rows)."""
    weights = np.ones(k)
    best = macro_f1_codes(y, proba.argmax(axis=1), k)
    for _ in range(rounds):
        changed = False
        for c in range(k):
            scores = []
            for m in grid:
                w = weights.copy()
                w[c] *= m
                scores.append(macro_f1_codes(y, (proba * w).argmax(axis=1), k))
            scores = np.asarray(scores)
            top = scores.max()
            if top > best + 1e-12:
                ties = np.flatnonzero(scores >= top - 1e-12)
                weights[c] *= grid[ties[len(ties) // 2]]
                best, changed = float(top), True
        if not changed:
            break
    return weights / weights.max(), best


def fit_decision(proba: np.ndarray, truth, classes: list[str], ids=None, rounds: int = 10,
                 grid: np.ndarray = GRID, folds: int = 5, seed: int = 0,
                 min_class_rows: int = MIN_CLASS_ROWS) -> DecisionRule:
    """Per-class weights maximising the macro-F1 of argmax(proba * w) on these (validation) rows.

    Coordinate ascent: for each class in turn, try its weight times every multiplier in `grid` and keep the best
    (the middle of the best plateau, so a flat optimum does not drift to its edge); repeat until a pass changes
    nothing. Weights start at 1 (plain argmax), so the fitted rule is never worse than argmax on these rows.

    On few rows the weights can fit noise, so first a cross-check (`folds` > 1): the rows are split in `folds`
    stratified parts, weights are fitted on all parts but one and judged on the one left out. If on average they
    do not beat argmax on the rows they were not fitted on, the rule stays plain argmax (all weights 1), and
    `cross_checked_gain` says by how much they lost. Before that, a class with fewer than `min_class_rows` rows
    keeps the rule at argmax too (`argmax_kept` says which). `ids` (the rows' ids) are remembered so `check_unseen` can
    refuse to judge the rule on them.
    """
    proba = np.asarray(proba, dtype=float)
    classes = list(classes)
    k = len(classes)
    if proba.ndim != 2 or proba.shape[1] != k:
        raise KorllamaError(f"probabilities of shape {proba.shape} do not match {k} classes.")
    y = _encode(truth, classes)
    if len(y) != len(proba):
        raise KorllamaError(f"{len(proba)} rows of probabilities but {len(y)} labels.")
    if len(y) == 0:
        raise KorllamaError("a decision rule needs validation rows to be fitted on; there are none.")
    start = macro_f1_codes(y, proba.argmax(axis=1), k)
    counts = np.bincount(y[y >= 0], minlength=k)[:k]
    weights, best, gain, kept = np.ones(k), start, None, None
    if counts.min() < min_class_rows:  # one row of such a class moves macro-F1 by points: weights would fit noise
        rare = int(counts.argmin())
        kept = (f"class {classes[rare]} has {counts[rare]} of the {len(y):,} validation rows, "
                f"fewer than {min_class_rows}")
    else:
        if folds > 1 and len(y) >= 2 * folds:
            gains = []
            for fit_part, judge_part in _folds(y, folds, seed):
                w, _ = _ascend(proba[fit_part], y[fit_part], k, rounds, grid)
                yj, pj = y[judge_part], proba[judge_part]
                gains.append(macro_f1_codes(yj, (pj * w).argmax(axis=1), k)
                             - macro_f1_codes(yj, pj.argmax(axis=1), k))
            gain = float(np.mean(gains))
        if gain is None or gain > 0:
            weights, best = _ascend(proba, y, k, rounds, grid)
    return DecisionRule(classes=classes, weights=weights.tolist(),
                        fitted_ids=None if ids is None else [str(i) for i in ids], fitted_rows=len(y),
                        valid_macro_f1={"argmax": start, "decision": best}, cross_checked_gain=gain,
                        argmax_kept=kept)

def _folds(y: np.ndarray, folds: int, seed: int):
    """(fit, judge) positions of a stratified k-fold split (plain k-fold when a class has too few rows)."""
    _, counts = np.unique(y, return_counts=True)
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts.min() >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    return splitter.split(np.zeros(len(y)), y)


def argmax_rule(classes: list[str]) -> DecisionRule:
    """The plain argmax as a rule (all weights 1)."""
    return DecisionRule(classes=list(classes), weights=[1.0] * len(classes))

