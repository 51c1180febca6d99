"""An evaluation folder: what it holds, and the one system it belongs to.

`korllama evaluate` and `korllama baseline` write one system's evaluation (metrics.json, predictions.csv; the
trees add decision.json); `korllama explain --out` the same folder adds that system's explanation (reasons.csv,
explain.json), which `korllama compare` shows under the evaluation's name. So a folder holds one system: an
explanation of another system is refused, and an evaluation replaced with --overwrite takes the folder's other
files (the replaced system's decision rule and explanation) with it. Light on purpose: the CLI checks `--out`
with it before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

from korllama.errors import KorllamaError
from korllama.io import claim_dir

METRICS_FILE, PREDICTIONS_FILE, DECISION_FILE = "metrics.json", "predictions.csv", "decision.json"
REASONS_FILE, EXPLAIN_FILE = "reasons.csv", "explain.json"
EVALUATION_FILES = (METRICS_FILE, PREDICTIONS_FILE, DECISION_FILE, REASONS_FILE, EXPLAIN_FILE)
EXPLANATION_FILES = (REASONS_FILE, EXPLAIN_FILE)


def claim_evaluation(out: str | Path, overwrite: bool = False) -> Path:
    """--out of evaluate and baseline: new, empty, or (with --overwrite) an evaluation folder, all of it replaced."""
    return claim_dir(out, overwrite, owns=EVALUATION_FILES, writes=EVALUATION_FILES, what="an evaluation")


def claim_explanation(out: str | Path, overwrite: bool, run: str | Path, baseline: bool) -> Path:
    """--out of explain: new, empty, or an evaluation folder of the same system (the run's own weights, or the
    trees with --baseline); an explanation already there is replaced only with --overwrite."""
    out = claim_dir(out, overwrite, owns=EVALUATION_FILES, writes=EXPLANATION_FILES, what="an explanation")
    path = out / METRICS_FILE
    if not path.is_file():
        return out
    try:
        evaluated = json.loads(path.read_text("utf-8"))
        mode, evaluated_run, base = evaluated.get("mode"), evaluated.get("run"), evaluated.get("base")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        raise KorllamaError(f"--out {out} holds a {METRICS_FILE} korllama cannot read, so an explanation cannot be "
                            "shown beside it; choose another --out.") from None
    if baseline:
        same = mode == "trees"
    else:
        same = mode != "trees" and base is None and evaluated_run is not None and \
            Path(evaluated_run).resolve() == Path(run).resolve()
    if not same:
        system = evaluated.get("system") or out.name
        explained = f"the tree baseline of {run}" if baseline else str(run)
        raise KorllamaError(f"--out {out} holds the evaluation of {system}, so an explanation of {explained} "
                            "there would be shown as that system's; explain into that system's own evaluation "
                            "folder, or a new --out.")
    return out


def clear_others(folder: str | Path, kept: tuple[str, ...]) -> None:
    """After an evaluation is written: remove what the folder held of the system it replaced."""
    for name in EVALUATION_FILES:
        if name not in kept:
            (Path(folder) / name).unlink(missing_ok=True)
