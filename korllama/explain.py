"""Reasons: why a row got its label (neutralise one field at a time and re-score). Group metrics (how well a system
does for each group of rows) are korllama.groups.

**Reasons.** For each row and each field the system reads, the field is replaced by a *neutral reference* and the
row is scored again; the reason is the change in the probability of the predicted label (and of every label):
`delta = P(label | row) - P(label | row with the field neutralised)`. A positive delta says the row's actual value
raises the predicted label; rank 1 is the field whose neutralising lowers it most. All variants of a chunk of rows
are scored in one call of the system's `proba_fn(table) -> (rows, labels)`, so the LLM (rank scoring,
korllama.scoring.score) and the tree baseline (`predict_proba`) are explained by the same code.

- **Which fields.** For an LLM, the fields its prompt template carries (the template's format fields that are
  columns or derived features of the spec, in the order they first appear); a column the prompt does not show
  cannot be a reason and gets no line. For the tree baseline, every column and derived feature it is fitted on.
- **The reference** is a typical value of the run's own *training* rows: the median for numbers (rounded for whole
  numbers), the most frequent value for categories and for numbers with a fixed set of values (term 36/60: a
  median of 48 would be a value no applicant has). Not the template's missing text ("Unknown"): the prompts
  almost never show it in training (only a missing employment length does), so a model's reaction to it measures
  its surprise at an unseen word, not the weight of the field; a typical value also reads naturally
  ("implied_rate 18.91% (typical 11.57%) raises E by 0.41"). Stored in the run (`references.json`) when the run
  is trained; re-derived from the run's training split otherwise.
- **Derived features.** Neutralising a raw column recomputes every feature derived from it (principal repaid ->
  the ratios, the implied rate, the payments made), so a prompt or a tree that reads the implied rate sees the
  rate the neutral value implies: otherwise the reasons would lie. A derived feature that is itself a field (the
  `compact` prompt's `implied_rate`) is neutralised by its own training median, with its inputs left as they are
  (replacing the inputs would also move every other feature derived from them, so the reason would no longer be
  about this one field); features derived from it (payments made from the implied rate) follow it.
- A variant whose field already holds the reference is not scored: its delta is exactly 0. For an LLM, identical
  prompts (a neutral value that prints the same) are scored once.

What one-field-at-a-time reasons do not show: interactions (two fields that matter only together), and the
direction of a change for values on the far side of typical. They are faithful to the model, not to the world.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from korllama.data import Table, as_table
from korllama.data.table import derive
from korllama.defaults import BATCH_SIZE
from korllama.errors import KorllamaError
from korllama.evaluation import EXPLAIN_FILE, EXPLANATION_FILES, REASONS_FILE
from korllama.io import write_csv, write_text
from korllama.outputs import record_written
from korllama.spec import TableSpec
from korllama.system import System
from korllama.ui import progress_bar

ProbaFn = Callable[[Table], np.ndarray]
REASON_COLUMNS = ["id", "label", "probability", "rank", "field", "value", "reference", "delta"]
MAX_VARIANTS = 4096  # rows x fields variants scored in one proba_fn call


# --- fields and references ----------------------------------------------------------------------------------------

# --- variants and reasons -----------------------------------------------------------------------------------------

def _differs(values: pd.Series, ref) -> np.ndarray:
    """Rows whose value is not the reference (a missing value differs from any reference but a missing one)."""
    missing = values.isna().to_numpy()
    if ref is None or (isinstance(ref, float) and np.isnan(ref)):
        return ~missing
    if pd.api.types.is_numeric_dtype(values.dtype) and not isinstance(ref, str):
        same = values.to_numpy(dtype=float, na_value=np.nan) == float(ref)
    else:
        same = (values.astype(object) == ref).to_numpy(dtype=bool, na_value=False)
    return missing | ~same


def neutralised(frame: pd.DataFrame, spec: TableSpec, field: str, ref) -> pd.DataFrame:
    """A copy of `frame` with `field` set to `ref` and every feature derived from it recomputed (in spec order)."""
    out = frame.copy()
    out[field] = pd.Series([ref] * len(out), index=out.index, dtype=frame[field].dtype) if ref is not None \
        else pd.Series([None] * len(out), index=out.index, dtype=frame[field].dtype)
    changed = {field}
    for d in spec.derived:
        if d.alias != field and changed.intersection(d.args):
            out[d.alias] = derive(out, d)
            changed.add(d.alias)
    return out


@dataclass
class Reasons:
    """Reasons for a table's rows: `deltas[i, f, k]` = P(label k | row i) - P(label k | row i, field f neutral)."""

    spec: TableSpec
    ids: list[str]
    fields: list[str]
    classes: list[str]
    proba: np.ndarray  # (rows, labels) of the rows as they are
    deltas: np.ndarray  # (rows, fields, labels)
    values: np.ndarray  # (rows, fields) the rows' own values (object)
    references: dict

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def delta(self) -> np.ndarray:
        """(rows, fields): the change in the probability of each row's predicted label."""
        return self.deltas[np.arange(len(self)), :, self.predicted]

    @property
    def ranks(self) -> np.ndarray:
        """(rows, fields) field indices, best reason first (largest delta; ties keep the fields' order)."""
        return np.argsort(-self.delta, axis=1, kind="stable")

    def frame(self) -> pd.DataFrame:
        """reasons.csv: one line per row and field, rank 1 first, then the change of every label's probability."""
        n, f = len(self), len(self.fields)
        order = self.ranks
        rows = np.repeat(np.arange(n), f)
        cols = order.reshape(-1)
        pred = self.predicted
        out = pd.DataFrame({
            "id": np.asarray(self.ids, dtype=object)[rows],
            "label": np.asarray(self.classes, dtype=object)[pred[rows]],
            "probability": self.proba[rows, pred[rows]].round(6),
            "rank": np.tile(np.arange(1, f + 1), n),
            "field": np.asarray(self.fields, dtype=object)[cols],
            "value": self.values[rows, cols],
            "reference": np.asarray([self.references.get(x) for x in self.fields], dtype=object)[cols],
            "delta": self.deltas[rows, cols, pred[rows]].round(6),
        })
        for k, c in enumerate(self.classes):
            out[f"delta_{c}"] = self.deltas[rows, cols, k].round(6)
        return out

    def top(self, i: int, k: int = 3) -> list[dict]:
        """Row i's k best reasons: field, value, reference, delta (of the predicted label), per-label deltas, text."""
        label = self.classes[self.predicted[i]]
        found = []
        for j in self.ranks[i][:k]:
            field, value, ref = self.fields[j], self.values[i, j], self.references.get(self.fields[j])
            delta = float(self.delta[i, j])
            found.append({"field": field, "value": _plain(value), "reference": _plain(ref), "delta": delta,
                          "deltas": {c: float(self.deltas[i, j, m]) for m, c in enumerate(self.classes)},
                          "text": sentence(self.spec, field, value, ref, label, delta)})
        return found


def _plain(x):
    """A JSON-able value: numpy scalars to Python, missing to None."""
    if x is None or (isinstance(x, float) and np.isnan(x)) or x is pd.NA:
        return None
    return x.item() if isinstance(x, np.generic) else x


def describe(spec: TableSpec, field: str, value) -> str:
    """A value as a person reads it, with the spec's format for the field (18.91%, 16,800,000, MORTGAGE)."""
    if _plain(value) is None:
        return "missing"
    column = next((c for c in [*spec.columns, *spec.derived] if c.alias == field), None)
    if isinstance(value, str) or getattr(column, "parser", None) == "category":
        return str(value)
    value = float(value)
    fmt = getattr(column, "format", "")
    if fmt and fmt != ".4g":
        try:
            return format(value, fmt)
        except ValueError:
            pass
    if getattr(column, "integer", False) or (value.is_integer() and abs(value) >= 1000):
        return f"{value:,.0f}"
    return f"{value:.4g}"


def sentence(spec: TableSpec, field: str, value, ref, label: str, delta: float) -> str:
    """"implied_rate 18.91% (typical 11.57%) raises E by 0.41"."""
    verb = "raises" if delta > 0 else "lowers" if delta < 0 else "does not change"
    amount = "" if delta == 0 else f" by {abs(delta):.2f}" if abs(delta) >= 0.005 else f" by {abs(delta):.1g}"
    shown, typical = describe(spec, field, value), describe(spec, field, ref)
    typical = "typical" if shown == typical else f"typical {typical}"
    return f"{field} {shown} ({typical}) {verb} {label}{amount}"


def explain(proba_fn: ProbaFn, table: Table, fields: list[str], references: dict, classes: list[str],
            max_variants: int = MAX_VARIANTS, progress=None) -> Reasons:
    """Reasons for every row of `table`: each of `fields` neutralised in turn, all variants of a chunk of rows
    scored in one `proba_fn` call together with the rows themselves. `progress(n)` is told rows done."""
    spec = table.spec
    missing = [f for f in fields if f not in references]
    if missing:
        raise KorllamaError(f"No neutral reference for {', '.join(missing)}: the references were made for another "
                            "spec; delete the run's references.json to derive them again.")
    unknown = [f for f in fields if f not in table.frame]
    if unknown:
        raise KorllamaError(f"{', '.join(unknown)} are not columns of {table.source} (spec {spec.name!r}).")
    n, k = len(table), len(classes)
    proba = np.zeros((n, k))
    deltas = np.zeros((n, len(fields), k))
    values = np.empty((n, len(fields)), dtype=object)
    chunk = max(1, max_variants // (len(fields) + 1))
    for start in range(0, n, chunk):
        part = table.frame.iloc[start:start + chunk].reset_index(drop=True)
        pieces, where = [part], []
        for j, field in enumerate(fields):
            values[start:start + len(part), j] = part[field].to_numpy(dtype=object)
            rows = np.flatnonzero(_differs(part[field], references[field]))
            if len(rows):
                pieces.append(neutralised(part.iloc[rows], spec, field, references[field]))
                where.append((j, rows))
        variants = Table(pd.concat(pieces, ignore_index=True), spec, table.source)
        scored = np.asarray(proba_fn(variants), dtype=float)
        if scored.shape != (len(variants), k):
            raise KorllamaError(f"The system gave probabilities of shape {scored.shape} for {len(variants)} rows and "
                                f"{k} labels.")
        own = scored[:len(part)]
        proba[start:start + len(part)] = own
        at = len(part)
        for j, rows in where:
            deltas[start + rows, j] = own[rows] - scored[at:at + len(rows)]
            at += len(rows)
        if progress is not None:
            progress(len(part))
    values = np.vectorize(_plain, otypes=[object])(values) if values.size else values
    return Reasons(spec, [str(i) for i in table.ids], list(fields), list(classes), proba, deltas, values,
                   {f: references[f] for f in fields})


# --- the systems: an LLM run (rank scoring) and the tree baseline --------------------------------------------------

def explain_rows(system: System, table: Table, references: dict, top: int = 3,
                 batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, list[list[dict]]]:
    """For the service: (P(label) per row, the top reasons per row) in one batched pass over rows x fields.

    Each reason is {field, value, reference, delta, deltas (per label), text}; the same numbers
    `korllama explain` writes for the row (both call `explain`)."""
    reasons = explain(lambda variants: system.predict_proba(variants, batch_size), table, system.fields, references,
                      system.classes)
    return reasons.proba, [reasons.top(i, top) for i in range(len(reasons))]


# --- the command ----------------------------------------------------------------------------------------------------

def select_rows(table: Table, ids: list[str] | None = None, held_out: bool = False, limit: int | None = None,
                run: System | None = None) -> Table:
    """The rows to explain: the run's held-out split, a seeded sample (as `evaluate --limit`), or given IDs."""
    if held_out:
        table = run.split(table).held_out
    if ids:
        index = pd.Index(table.ids)
        absent = [i for i in ids if i not in index]
        if absent:
            where = "the run's held-out rows of " if held_out else ""
            raise KorllamaError(f"{where}{table.source} has no row with ID {absent[0]!r}"
                                + (f" ({len(absent) - 1} more IDs not found)" if len(absent) > 1 else "")
                                + f"; IDs look like {table.ids.iloc[0]!r}.")
        table = table.subset(index.get_indexer(list(dict.fromkeys(ids))))
    if limit is not None and limit < len(table):
        table = table.sample(limit, seed=0)
    return table


def explain_run(system: System, data: str | Path | Table, out: str | Path, ids: list[str] | None = None,
                held_out: bool = False, limit: int | None = None, batch_size: int = BATCH_SIZE,
                console=None) -> tuple[Reasons, dict]:
    """`korllama explain`: reasons for rows of `data` from a system — an LLM run, or the tuned trees `korllama
    baseline` saved (korllama.system) — written as OUT/reasons.csv and OUT/explain.json. Returns the reasons and the
    summary. `data`: a file, or the Table when the caller has already read it."""
    table = select_rows(as_table(data, system.spec), ids, held_out, limit, system)
    fields = system.fields
    template = system.template.name if system.template is not None else ""
    if not fields:
        raise KorllamaError(f"The run's prompt template {template!r} shows no column of spec {system.spec.name!r}: "
                            "there is nothing to neutralise.")
    if system.template is not None:
        system.encode(table)  # a prompt longer than the model reads is refused before any work
    references = system.references

    def proba_fn(variants: Table) -> np.ndarray:
        return system.predict_proba(variants, batch_size)

    started = time.perf_counter()
    with progress_bar(len(table), "explaining", console) as advance:
        reasons = explain(proba_fn, table, fields, references, system.classes, progress=advance)
    seconds = time.perf_counter() - started
    out = Path(out)
    write_csv(out / REASONS_FILE, reasons.frame())
    summary = {"system": system.name, "run": str(system.root), "template": template,
               "data": table.source, "held_out": held_out, "rows": len(reasons), "fields": fields,
               "references": reasons.references, "seconds": seconds, "rows_per_s": len(reasons) / max(seconds, 1e-9)}
    write_text(out / EXPLAIN_FILE, json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    record_written(out, EXPLANATION_FILES)
    return reasons, summary


# --- global importance --------------------------------------------------------------------------------------------

def importance(reasons: pd.DataFrame) -> pd.Series:
    """Mean |delta| per field over the rows of a reasons.csv frame, largest first."""
    return reasons.assign(size=reasons["delta"].abs()).groupby("field")["size"].mean().sort_values(ascending=False)
