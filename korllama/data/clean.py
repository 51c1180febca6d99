"""Validate and clean a frame of raw strings against its spec: headers found (Korean or alias), every cell parsed,
every problem a DataError naming the file, the line, the column, the value and what is allowed."""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from korllama.data.table import Table, add_derived, duplicate_ids
from korllama.errors import DataError, clip, quote
from korllama.spec import TableSpec, nfc, parse_column

DELIMITERS = (";", "\t", "|")
# line breaks, other control characters and the bidirectional overrides (an ID that reads backwards in a report);
# not NUL, which no file or request can carry in an ID and the service uses to mark applicants sent without one
ODD_ID = r"[\x01-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069]"


class DataWarning(UserWarning):
    """Odd but usable input (a category never seen in training); the CLI prints these in yellow."""



def refuse_other_delimiters(headers, source: str) -> None:
    if len(headers) == 1:
        only = str(headers[0])
        for sep in DELIMITERS:
            if sep in only:
                raise DataError(f"{source}: the header is one column separated by {quote(sep)}; "
                                "korllama reads comma-separated files (save as CSV with commas).")


def refuse_duplicate_headers(headers, source: str) -> None:
    seen: dict[str, int] = {}
    for i, h in enumerate(str(h).strip() for h in headers):
        if h in seen:
            raise DataError(f"{source}: the header {quote(h)} appears twice (columns {seen[h] + 1} and {i + 1}); each "
                            "column needs its own name: rename or remove one.")
        seen[h] = i


def find_header(headers: dict, name: str, alias: str):
    """The file's header for a spec column: its name, its alias, or the alias in any case (`headers` maps each
    stripped header to the file's own); None when absent."""
    for key in (name, alias):
        if key in headers:
            return headers[key]
    folded = {h.casefold(): h for h in headers}.get(alias.casefold())
    return None if folded is None else headers[folded]


def clean(raw: pd.DataFrame, spec: TableSpec, source: str = "<memory>", first_line: int = 2,
          row_label: Callable[[int], str] | None = None, lines: np.ndarray | None = None) -> Table:
    """Validate and clean a frame of raw strings (headers in Korean or as aliases) into a Table.

    `first_line` is the line number of the first row in the source, so errors point at the real line (`lines`, when
    given, is each row's line).
    `row_label(i)` replaces "<source>, line N" in error messages (the HTTP service says "applicants[i]").
    """
    def where(i: int) -> str:
        if row_label is not None:
            return row_label(i)
        return f"{source}, line {line_of(i)}" if first_line > 1 else f"{source}, row {i + 1}"

    def line_of(i: int) -> int:
        return int(lines[i]) if lines is not None else first_line + i

    refuse_duplicate_headers(raw.columns, source)
    refuse_other_delimiters(raw.columns, source)
    headers = {nfc(str(h).strip()): h for h in raw.columns}  # a header typed on macOS (NFD) is the same header
    name_of = {c.alias: nfc(c.name) for c in [*spec.columns, spec.id, spec.label]}

    def find(name: str, alias: str):
        name = name_of.get(alias, nfc(name))
        same = [h for h in headers if h in (name, alias) or h.casefold() == alias.casefold()]
        if len(same) > 1:  # "대출기간" and "term": which one would be read is a guess
            raise DataError(f"{source}: the columns {', '.join(repr(h) for h in same)} are all {name} ({alias}); "
                            "keep one.", column=alias)
        return find_header(headers, name, alias)

    absent = [f"{c.name} ({c.alias})" for c in spec.columns if find(c.name, c.alias) is None]
    if absent:
        raise DataError(f"{source} is missing required column{'s' * (len(absent) > 1)}: {', '.join(absent)}.")
    if raw.empty:
        raise DataError(f"{source} has a header but no rows.")

    out: dict[str, pd.Series | np.ndarray] = {}
    warns: list[str] = []
    id_col = find(spec.id.name, spec.id.alias)
    if id_col is None:
        ids = pd.Series([f"ROW_{i:05d}" for i in range(len(raw))], dtype=object)
    else:
        ids = raw[id_col].fillna("").astype(str).str.strip()
        odd = ids.eq("") | ids.str.contains(ODD_ID, regex=True)
        if odd.any():
            i = int(np.flatnonzero(odd.to_numpy())[0])
            what = "is empty" if ids.iloc[i] == "" else f"{quote(ids.iloc[i])} holds a control or direction character"
            n = int(odd.sum())
            raise DataError(f"{where(i)}, column {id_col}: the ID {what}; every row needs an ID of visible text "
                            f"({n} row{'s' * (n != 1)} like it).", row=i, column=spec.id.alias)
        twins = duplicate_ids(ids)
        if twins is not None:
            first, twin = twins
            also = row_label(first) if row_label is not None else f"on line {line_of(first)}"
            shared = int(ids.duplicated(keep=False).sum())
            raise DataError(f"{where(twin)}, column {id_col}: duplicate ID {quote(ids.iloc[twin])} "
                            f"(also {also}); {shared} rows share an ID. IDs must be unique.",
                            row=twin, column=spec.id.alias)
    out[spec.id.alias] = ids.to_numpy(dtype=object)

    for col in spec.columns:
        header = find(col.name, col.alias)
        values, missing, bad = parse_column(raw[header], col)
        if not col.nullable:
            bad = bad | missing
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            value = raw[header].iloc[rows[0]]
            more = f" ({len(rows) - 1} more rows like it)" if len(rows) > 1 else ""
            raise DataError(f"{where(rows[0])}, column {header}: {quote(value)} is not allowed; "
                            f"expected {col.allowed}{more}.", row=int(rows[0]), column=col.alias)
        if col.parser == "category" and col.seen is not None and col.unseen is not None:
            unseen = values.notna() & ~values.isin(col.seen)
            if unseen.any():
                kinds = sorted(set(values[unseen]))
                shown = ", ".join([*(clip(k) for k in kinds[:5]), *["..."] * (len(kinds) > 5)])
                warns.append(f"{source}, column {header}: {unseen.sum()} rows have values never seen in training "
                             f"({shown}); treated as {quote(col.unseen)}.")
                values = values.where(~unseen, col.unseen)
        if col.parser == "category":
            out[col.alias] = values.to_numpy(dtype=object)
        elif col.integer:
            out[col.alias] = values.astype("Int64")
        else:
            out[col.alias] = values.to_numpy(dtype=float)

    label_col = find(spec.label.name, spec.label.alias)
    if label_col is not None:
        labels = raw[label_col].astype(str).str.strip()
        if not labels.str.isascii().all():  # a Korean rubric's labels typed on macOS (NFD)
            labels = labels.map(nfc)
        bad = ~labels.isin(spec.label.classes)
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            shown = quote(raw[label_col].iloc[rows[0]])
            raise DataError(f"{where(rows[0])}, column {label_col}: {shown} is not a grade; "
                            f"expected one of {', '.join(spec.label.classes)}"
                            + (f" ({len(rows) - 1} more rows like it)." if len(rows) > 1 else "."),
                            row=int(rows[0]), column=spec.label.alias)
        out[spec.label.alias] = labels.to_numpy(dtype=object)

    for col in spec.columns:  # odd but possible: graded as it is, with a warning
        if col.at_most is not None:
            over = np.flatnonzero(pd.to_numeric(pd.Series(out[col.alias]), errors="coerce").to_numpy(float)
                                   > pd.to_numeric(pd.Series(out[col.at_most]), errors="coerce").to_numpy(float))
            if len(over):
                limit = spec.column(col.at_most)
                warns.append(f"{where(over[0])}, column {find(col.name, col.alias)}: {len(over):,} row"
                             f"{'s' * (len(over) != 1)} above {find(limit.name, limit.alias)} (e.g. "
                             f"{clip(str(raw[find(col.name, col.alias)].iloc[over[0]]))} > "
                             f"{clip(str(raw[find(limit.name, limit.alias)].iloc[over[0]]))}); graded as they are: "
                             "check the data.")

    frame = pd.DataFrame(out)
    add_derived(frame, spec)
    for w in warns:
        _warnings.warn(w, DataWarning, stacklevel=2)
    return Table(frame, spec, source, warns)
