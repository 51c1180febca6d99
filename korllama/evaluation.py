"""An evaluation folder, owned here: its file names, the typed record of its metrics.json (`Evaluation`, written and
read only through this module), and which system it belongs to.

    EVAL/metrics.json     the figures (`Evaluation`): macro-F1, accuracy, QWK, per label, confusion, calibration, and
                          what was scored (system, kind, rows, run, data)
    EVAL/predictions.csv  ID, truth, prediction, P_<label>... per scored row
    EVAL/decision.json    the trees' decision rule, when `korllama baseline` wrote the folder
    EVAL/reasons.csv, EVAL/explain.json   the same system's explanation (`korllama explain --out`)

`korllama evaluate` and `korllama baseline` write one system's evaluation; `korllama explain --out` the same folder
adds that system's explanation, which `korllama compare` shows under the evaluation's name. So a folder holds one
system: an explanation of another system is refused, and an evaluation replaced with --overwrite takes the folder's
other files (the replaced system's decision rule and explanation) with it. Light on purpose (pydantic, no torch):
the CLI checks `--out` with it before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from korllama.choices import Mode
from korllama.errors import KorllamaError
from korllama.io import atomic_path, json_text
from korllama.layout import DECISION_FILE, TreesDir
from korllama.outputs import claim_dir, record_written

METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.csv"
REASONS_FILE, EXPLAIN_FILE = "reasons.csv", "explain.json"
EVALUATION_FILES = (METRICS_FILE, PREDICTIONS_FILE, DECISION_FILE, REASONS_FILE, EXPLAIN_FILE)
EXPLANATION_FILES = (REASONS_FILE, EXPLAIN_FILE)
OUTPUT_FILES = (METRICS_FILE, PREDICTIONS_FILE)  # what every evaluation writes


# --- metrics.json, typed -------------------------------------------------------------------------------------------

class _Record(BaseModel):
    # unknown keys (a later korllama's) are kept, so reading and writing an evaluation again loses nothing
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class LabelFigures(_Record):
    precision: float
    recall: float
    f1: float
    support: int


class Calibration(_Record):
    """Confidence of the top label against how often it is right, in equal-width bins; None where a bin is empty."""

    bin_edges: list[float]
    count: list[int]
    ece: float
    confidence: list[float | None]
    accuracy: list[float | None]


class RuleFigures(_Record):
    macro_f1: float | None = None
    accuracy: float | None = None


class DecisionFigures(_Record):
    """Argmax and the macro-F1 decision rule side by side, on the scored rows the rule was not fitted on."""

    rows: int
    left_out_fitting_rows: int
    weights: dict[str, float]
    argmax: RuleFigures
    rule: RuleFigures = Field(alias="macro-f1")


class Evaluation(_Record):
    """metrics.json: one system's figures on the rows it scored. Fields in the order the file lists them."""

    n: int
    macro_f1: float
    accuracy: float
    ordinal: bool = True
    qwk: float | None = None  # ordinal label sets only; invalid answers left out
    within_one: float | None = None  # share of answers within one label of the truth (ordinal only)
    invalid_rate: float = 0.0
    classes: list[str]
    per_class: dict[str, LabelFigures]
    confusion: list[list[int]]  # rows = truth, columns = prediction
    calibration: Calibration | None = None  # absent for generated answers (no probabilities)
    system: str = ""  # the name in reports (default: the folder's)
    mode: Mode = Mode.SCORE  # how the system answered: what kind of system it is
    template: str = ""
    spec: str | None = None
    rows_per_s: float | None = None
    seconds: float | None = None
    data: str | None = None
    held_out: bool = False
    run: str | None = None  # the run folder (LLM) or the trees' folder scored
    base: str | None = None  # a bare base model scored instead of the run's weights
    processes: int = 1
    group_columns: dict = Field(default_factory=dict)
    decision_rule: str = "argmax"  # what chose the predictions
    off_format_rate: float | None = None  # generated answers that are not just a label
    decision: DecisionFigures | None = None
    fit_seconds: float | None = None  # the trees: their search, rule and refit
    fit_cpu_seconds: float | None = None
    train_rows: int | None = None
    search: list[dict] | None = None  # the trees' settings tried

    @property
    def trees(self) -> bool:
        return self.mode == Mode.TREES

    @property
    def own_run(self) -> Path | None:
        """The run folder whose own weights were scored (None for a bare base model or the trees)."""
        return Path(self.run) if self.run and not self.base and not self.trees else None

    def text(self) -> str:
        """The JSON korllama writes: only the fields that were set, in field order; NaN as null."""
        return json_text(self.model_dump(mode="json", by_alias=True, exclude_unset=True))


# --- the figures: scikit-learn computes them ------------------------------------------------------------------------

def metrics(truth, pred, classes: list[str], proba: np.ndarray | None = None, ordinal: bool = True) -> Evaluation:
    """The figures of an evaluation. `pred` may hold None/'' for invalid answers: they count as wrong. For an ordinal
    label set (`classes` in order) also QWK and the share of answers within one label of the truth; None otherwise."""
    truth = np.asarray(truth, dtype=object)
    pred = np.asarray([p if p in classes else "" for p in pred], dtype=object)
    valid = pred != ""
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
    rank = {c: i for i, c in enumerate(classes)}
    found = Evaluation(
        n=int(len(truth)),
        macro_f1=float(f.mean()),  # = f1_score(average="macro") over the same labels
        accuracy=float(accuracy_score(truth, pred)),
        ordinal=bool(ordinal),
        # QWK rewards near misses; invalid answers are left out of it
        qwk=(float(cohen_kappa_score(truth[valid], pred[valid], labels=classes, weights="quadratic"))
             if valid.any() else 0.0) if ordinal else None,
        within_one=float(np.mean([v and abs(rank[t] - rank[q]) <= 1 for t, q, v in zip(truth, pred, valid)]))
        if ordinal else None,
        invalid_rate=float(1 - valid.mean()),
        classes=list(classes),
        per_class={c: LabelFigures(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]), support=int(s[i]))
                   for i, c in enumerate(classes)},
        confusion=confusion_matrix(truth, pred, labels=classes).tolist())
    if proba is not None:
        found.calibration = reliability(truth, proba, classes)
    return found


def reliability(truth, proba: np.ndarray, classes: list[str], bins: int = 10) -> Calibration:
    """Confidence of the top label vs how often it is right, in equal-width bins (for the reliability diagram)."""
    top = proba.max(axis=1)
    correct = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] == np.asarray(truth, dtype=object)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(top, edges) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    shown = np.maximum(count, 1)
    conf = np.bincount(which, weights=top, minlength=bins) / shown
    acc = np.bincount(which, weights=correct.astype(float), minlength=bins) / shown
    ece = float((count * np.abs(acc - conf)).sum() / max(len(top), 1))
    empty = count == 0  # None in JSON: an empty bin has no confidence or accuracy
    return Calibration(bin_edges=edges.tolist(), count=count.tolist(), ece=ece,
                       confidence=[None if e else float(c) for c, e in zip(conf, empty)],
                       accuracy=[None if e else float(a) for a, e in zip(acc, empty)])


def side_by_side(rule, truth, proba: np.ndarray, ids, classes: list[str]) -> DecisionFigures:
    """Argmax and the decision rule on the same rows: those of the scored rows the rule was not fitted on."""
    unseen = ~np.isin(np.asarray(ids, dtype=object).astype(str), list(rule.fitted_ids or []))
    truth = np.asarray(truth, dtype=object)[unseen]

    def figures(pred) -> RuleFigures:
        if not len(truth):
            return RuleFigures(macro_f1=None, accuracy=None)
        return RuleFigures(macro_f1=float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0)),
                           accuracy=float(accuracy_score(truth, pred)))

    return DecisionFigures(rows=int(unseen.sum()), left_out_fitting_rows=int((~unseen).sum()),
                           weights=dict(zip(classes, rule.weights)),
                           argmax=figures(np.asarray(classes, dtype=object)[proba[unseen].argmax(axis=1)]),
                           rule=figures(rule.apply(proba[unseen])))


# --- the files ---------------------------------------------------------------------------------------------------

def read_evaluation(folder: str | Path) -> Evaluation:
    """metrics.json of an evaluation folder, its `system` defaulting to the folder's name; one sentence when the
    folder holds none, or one korllama did not write."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise KorllamaError(f"{folder} holds no {METRICS_FILE}; make one with `korllama evaluate` or "
                            "`korllama baseline`.")
    try:
        body = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KorllamaError(f"{path} is not valid JSON ({exc}); write it again with `korllama evaluate`.") from None
    try:
        found = Evaluation.model_validate(body)
    except ValidationError as exc:
        missing = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "missing" and len(e["loc"]) == 1]
        first = exc.errors()[0]
        why = f"no {', '.join(missing)}" if missing else \
            f"{'.'.join(str(p) for p in first['loc']) or 'the file'}: {first['msg']}"
        raise KorllamaError(f"{path} is not a korllama evaluation ({why}); make one with `korllama evaluate` or "
                            "`korllama baseline`.") from None
    if not found.system:
        found.system = Path(folder).name
    return found


def write_evaluation(out_dir: str | Path, result: Evaluation, ids, truth, pred, proba: np.ndarray | None,
                     classes: list[str], extra_columns: dict | None = None) -> Path:
    """EVAL/metrics.json and EVAL/predictions.csv (ID, truth, prediction, P_<label>..., `extra_columns`), both
    together or neither (an interrupted command leaves neither); then what the folder held of a replaced system
    (its decision rule, its explanation) goes."""
    out_dir = Path(out_dir)
    frame = pd.DataFrame({"ID": list(ids), "truth": list(truth), "prediction": [p or "" for p in pred]})
    if proba is not None:
        for i, c in enumerate(classes):
            frame[f"P_{c}"] = proba[:, i].round(6)
    for name, values in (extra_columns or {}).items():
        frame[name] = list(values)
    body = result.text()
    with atomic_path(out_dir / PREDICTIONS_FILE) as csv_tmp, atomic_path(out_dir / METRICS_FILE) as json_tmp:
        frame.to_csv(csv_tmp, index=False)
        json_tmp.write_text(body, encoding="utf-8")
    clear_others(out_dir, OUTPUT_FILES)
    return out_dir


# --- the folder: claimed before any work, one system in it ----------------------------------------------------------

def claim_evaluation(out: str | Path, overwrite: bool = False, keeps: tuple[str, ...] = ()) -> Path:
    """--out of evaluate and baseline: new, empty, or (with --overwrite) an evaluation folder, all of it replaced.
    `keeps`: more names of korllama's that the folder may hold (the trees' saved model, for `korllama baseline`)."""
    owns = (*EVALUATION_FILES, *keeps)
    if not keeps and TreesDir(out).is_trees:
        raise KorllamaError(f"--out {out} holds a tree baseline (korllama baseline wrote it: its trees and their "
                            "own evaluation); write this evaluation into a new --out.")
    return claim_dir(out, overwrite, owns=owns, writes=owns, what="an evaluation", folders=TreesDir.FOLDERS)


def claim_explanation(out: str | Path, overwrite: bool, explained: str | Path, trees: bool,
                      keeps: tuple[str, ...] = ()) -> Path:
    """--out of explain: new, empty, or an evaluation folder of the same system (the run's own weights, or the same
    trees); an explanation already there is replaced only with --overwrite."""
    out = claim_dir(out, overwrite, owns=(*EVALUATION_FILES, *keeps), writes=EXPLANATION_FILES,
                    what="an explanation")
    if not (out / METRICS_FILE).is_file():
        return out
    try:
        evaluated = read_evaluation(out)
    except KorllamaError:
        raise KorllamaError(f"--out {out} holds a {METRICS_FILE} korllama cannot read, so an explanation cannot be "
                            "shown beside it; choose another --out.") from None
    target = Path(explained).resolve()
    if trees:
        same = evaluated.trees and (evaluated.run is None or Path(evaluated.run).resolve() == target)
    else:
        same = evaluated.own_run is not None and evaluated.own_run.resolve() == target
    if not same:
        raise KorllamaError(f"--out {out} holds the evaluation of {evaluated.system or out.name}, so an explanation "
                            f"of {explained} there would be shown as that system's; explain into that system's own "
                            "evaluation folder, or a new --out.")
    return out


def clear_others(folder: str | Path, kept: tuple[str, ...]) -> None:
    """After an evaluation is written: remove what the folder held of the system it replaced (claim_dir checked that
    korllama wrote it), and record what was written."""
    for name in EVALUATION_FILES:
        if name not in kept:
            (Path(folder) / name).unlink(missing_ok=True)
    record_written(folder, kept)
