"""The Table: a validated, clean frame with its spec; the stratified split; a table's profile."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from korllama.errors import DataError
from korllama.features import OPS
from korllama.spec import TableSpec


@dataclass
class Table:
    """A validated, clean table: `frame` columns are id, the spec's aliases, the label (if any), derived."""

    frame: pd.DataFrame
    spec: TableSpec
    source: str = "<memory>"
    warnings: list[str] = field(default_factory=list)

    @property
    def has_labels(self) -> bool:
        return self.spec.label.alias in self.frame

    @property
    def labels(self) -> pd.Series:
        return self.frame[self.spec.label.alias]

    @property
    def ids(self) -> pd.Series:
        return self.frame[self.spec.id.alias]

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, index) -> Table:
        return Table(self.frame.loc[index].reset_index(drop=True), self.spec, self.source, list(self.warnings))

    def sample(self, n: int, seed: int = 0) -> Table:
        """`n` random rows (all of them when there are fewer), the same for the same seed, in table order."""
        return self.subset(self.frame.sample(n=min(n, len(self)), random_state=seed).sort_index().index)


def duplicate_ids(ids) -> tuple[int, int] | None:
    """(first, twin): the positions of the first ID that occurs again and of its first occurrence, or None when
    the IDs are unique. Missing IDs (None) are no one's twin."""
    ids = pd.Series(list(ids), dtype=object)
    again = (ids.duplicated(keep="first") & ids.notna()).to_numpy()
    if not again.any():
        return None
    twin = int(np.flatnonzero(again)[0])
    first = int(np.flatnonzero((ids == ids.iloc[twin]).to_numpy())[0])
    return first, twin


def add_derived(frame: pd.DataFrame, spec: TableSpec) -> None:
    """Add the spec's derived features to a clean frame, in place (vectorised)."""
    for d in spec.derived:
        frame[d.alias] = derive(frame, d)


def derive(frame: pd.DataFrame, d) -> np.ndarray:
    """One derived feature `d` (a spec's DerivedSpec) of a clean frame: its op over its args, vectorised."""
    args = [frame[a].to_numpy(dtype=float, na_value=np.nan) for a in d.args]
    return OPS[d.op](*args, weights=d.weights) if d.weights else OPS[d.op](*args)


class Split(NamedTuple):
    """A table's rows cut three ways: `train` (what training fits), `valid` (what choices are made on: the best
    checkpoint, the decision rule, a prompt's fields), `test` (kept aside, no choice made on them: the figures a
    run reports), or None for a two-way split (data.test_fraction 0, as every run before it existed)."""

    train: Table
    valid: Table
    test: Table | None

    @property
    def held_out(self) -> Table:
        """The rows a system's figures are reported on (`--held-out`): the test rows, or the validation rows of a
        split without a test part."""
        return self.valid if self.test is None else self.test


def split(table: Table, valid_fraction: float = 0.2, seed: int = 0, test_fraction: float = 0.0) -> Split:
    """Stratified split by label (rows keep their order within each part). The validation rows are drawn first,
    exactly as a two-way split draws them, so they are the same rows for any `test_fraction` (a choice made on them
    before a test part existed stays on them); the test rows (`test_fraction` of the table) come from the rest."""
    if valid_fraction + test_fraction >= 1:
        raise DataError(f"valid fraction {valid_fraction:g} + test fraction {test_fraction:g} leave no rows of "
                        f"{table.source} to train on: their sum must be under 1.")
    require_splittable(table, valid_fraction)
    rest, valid = _stratified(table, valid_fraction, seed)
    if not test_fraction:
        return Split(rest, valid, None)
    share = test_fraction / (1 - valid_fraction)  # of the rows left after the validation rows
    labels = rest.labels.nunique()
    if len(rest) < smallest_split(labels, share):
        n_test = math.ceil(share * len(rest))
        raise DataError(f"{table.source}: the {len(rest):,} rows left after its {len(valid):,} validation rows cannot "
                        f"be split {len(rest) - n_test}/{n_test} for training and test (test fraction "
                        f"{test_fraction:g}) with a row of each of its {labels} labels on both sides: use a larger "
                        "table, or no test rows (data.test_fraction=0; `korllama baseline --test-fraction 0`).")
    train, test = _stratified(rest, share, seed)
    return Split(train, valid, test)


def _stratified(table: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    """(the rest, a stratified `fraction` of `table`), scikit-learn's split: ceil for the drawn part."""
    stratify = table.labels if table.labels.value_counts().min() >= 2 else None
    keep_idx, drawn_idx = train_test_split(
        np.arange(len(table)), test_size=fraction, random_state=seed, stratify=stratify)
    return table.subset(np.sort(keep_idx)), table.subset(np.sort(drawn_idx))


def require_splittable(table: Table, valid_fraction: float, what: str = "split",
                       way_out: str = " (or another valid fraction)") -> None:
    """Refuse, in one sentence, a table too small for a split at `valid_fraction` to hold a row of each label on
    both sides (scikit-learn's own refusal is a traceback). `what` names the split (e.g. the trees' inner one)."""
    if not table.has_labels:
        raise DataError(f"{table.source} has no {table.spec.label.name} column: a split needs labelled rows.")
    counts = table.labels.value_counts()
    need = smallest_split(len(counts), valid_fraction)
    if len(table) < need:
        n_valid = math.ceil(valid_fraction * len(table))
        raise DataError(f"{table.source} has {len(table):,} labelled row{'s' * (len(table) != 1)} of {len(counts)} "
                        f"label{'s' * (len(counts) != 1)}: {what} {len(table) - n_valid}/{n_valid} (valid fraction "
                        f"{valid_fraction:g}), one part cannot hold a row of each label; it needs at least {need} "
                        f"rows{way_out}.")


def smallest_split(labels: int, valid_fraction: float) -> int:
    """The fewest rows whose split at `valid_fraction` (scikit-learn's: ceil for the validation part) leaves room
    for one row of each of `labels` labels in both parts."""
    k = max(labels, 1)

    def fits(n: int) -> bool:
        n_valid = math.ceil(valid_fraction * n)
        return n_valid >= k and n - n_valid >= k

    n = max(2 * k, math.floor((k - 1) / valid_fraction) + 1, math.ceil(k / (1 - valid_fraction)))
    while n > 2 * k and fits(n - 1):  # the closed form, corrected for rounding
        n -= 1
    while not fits(n):
        n += 1
    return n


class Profile:
    """What `korllama data check` prints (rows, per-column summary, label distribution, derived medians by label),
    gathered chunk by chunk: `add(table)` keeps only each number column as float64 and each category column's
    counts, so a file streamed in chunks (TableChunks) costs a few bytes a row, not its raw text (a 2.95 M-row file
    took 5.1 GB read whole). The figures are exact: the same as on the whole table at once."""

    def __init__(self, spec):
        self.spec = spec
        self.numbers: dict[str, list[np.ndarray]] = {}
        self.counts: dict[str, pd.Series] = {}
        self.missing: dict[str, int] = {}
        self.labels: list[np.ndarray] = []
        self.rows = 0

    def add(self, table: Table) -> Profile:
        frame = table.frame
        self.rows += len(frame)
        for col in [*self.spec.columns, *self.spec.derived]:
            s = frame[col.alias]
            self.missing[col.alias] = self.missing.get(col.alias, 0) + int(s.isna().sum())
            if getattr(col, "parser", None) == "category":
                counts = s.value_counts()
                self.counts[col.alias] = counts.add(self.counts[col.alias], fill_value=0) \
                    if col.alias in self.counts else counts
            else:
                self.numbers.setdefault(col.alias, []).append(s.astype(float).to_numpy())
        if table.has_labels:  # one byte a row: the label's place in the spec (clean refused any other label)
            self.labels.append(pd.Categorical(table.labels, categories=self.spec.label.classes).codes)
        return self

    def result(self, source: str, warnings: list[str]) -> dict:
        spec, columns = self.spec, []
        for col in [*spec.columns, *spec.derived]:
            entry = {"column": col.alias, "header": getattr(col, "name", "(derived)"),
                     "missing": self.missing.get(col.alias, 0)}
            if col.alias in self.counts:
                counts = self.counts[col.alias].sort_values(ascending=False, kind="stable")
                entry["summary"] = ", ".join(f"{k} {v / self.rows:.0%}" for k, v in counts.head(3).items())
                entry["distinct"] = int((counts > 0).sum())
            else:
                x = pd.Series(np.concatenate(self.numbers.get(col.alias, [np.zeros(0)])))
                entry.update(min=float(x.min()), median=float(x.median()), max=float(x.max()))
            columns.append(entry)
        result = {"source": source, "spec": spec.name, "rows": self.rows, "columns": columns, "warnings": warnings}
        if self.labels:
            labels = pd.Series(pd.Categorical.from_codes(np.concatenate(self.labels), spec.label.classes))
            counts = labels.value_counts().reindex(spec.label.classes, fill_value=0)
            result["labels"] = {k: int(v) for k, v in counts.items()}
            result["derived_median_by_label"] = {
                d.alias: {k: (None if pd.isna(v) else float(v)) for k, v in
                          pd.Series(np.concatenate(self.numbers[d.alias])).groupby(labels.to_numpy(), observed=False)
                          .median()
                          .reindex(spec.label.classes).items()}
                for d in spec.derived}
        return result


def profile(table: Table) -> dict:
    """What `korllama data check` prints, for a table read whole (Profile gathers it chunk by chunk)."""
    return Profile(table.spec).add(table).result(table.source, table.warnings)
