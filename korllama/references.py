"""The neutral reference of every field of a table: what `korllama explain` puts in a field's place to measure
its weight — the median of the run's training rows for numbers (rounded for whole numbers), the most frequent
value for categories and for numbers with a fixed set of values. Stored in a run as references.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from korllama.data import Table
from korllama.errors import KorllamaError
from korllama.io import write_text


def reference_values(train: Table) -> dict[str, object]:
    """The neutral value of every column and derived feature, from training rows (see the module's docstring)."""
    spec, frame = train.spec, train.frame
    refs: dict[str, object] = {}
    for col in spec.columns:
        values = frame[col.alias].dropna()
        if values.empty:
            refs[col.alias] = None
        elif col.parser == "category" or col.values:
            counts = values.value_counts()
            top = counts[counts == counts.max()].index  # ties: the smallest value, so the choice is repeatable
            best = sorted(top, key=str)[0]
            refs[col.alias] = str(best) if col.parser == "category" else _number(best, col.integer)
        else:
            refs[col.alias] = _number(values.astype(float).median(), col.integer)
    for d in spec.derived:
        values = pd.Series(frame[d.alias], dtype=float).dropna()
        refs[d.alias] = None if values.empty else float(values.median())
    return refs


def _number(x, integer: bool):
    return int(np.floor(float(x) + 0.5)) if integer else float(x)


def save_references(path: str | Path, refs: dict, source: str, rows: int) -> None:
    write_text(path, json.dumps({"source": source, "rows": rows, "references": refs}, indent=1,
                                ensure_ascii=False))


def load_references(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text("utf-8"))["references"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KorllamaError(f"{path} is not a references file written by korllama ({exc}); delete it and the "
                            "references are derived again from the run's training rows.") from None
