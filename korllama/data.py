"""Read a table (CSV in utf-8 / utf-8-sig / cp949, or Parquet), validate it against its spec, clean it.

`read_table(path, spec)` -> `Table`: a clean frame whose columns are the spec's aliases (plus `id`, the label
and the derived features), with the spec and any warnings. Every problem with the file is a DataError whose
message names the file, the line, the column, the value and what is allowed; nothing is half-read.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import warnings as _warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from korllama.errors import DataError
from korllama.features import OPS
from korllama.schema import TableSpec, load_spec, parse_column

ENCODINGS = ("utf-8-sig", "cp949")  # utf-8-sig reads plain utf-8 too
DELIMITERS = (";", "\t", "|")


class DataWarning(UserWarning):
    """Odd but usable input (a category never seen in training); the CLI prints these in yellow."""


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


def read_table(path: str | Path, spec: TableSpec | str | Path | None = None) -> Table:
    """Read, validate and clean a CSV or Parquet file."""
    spec = spec if isinstance(spec, TableSpec) else load_spec(spec)
    path = Path(path)
    raw, line_of_first_row, lines = _read_raw(path)
    return clean(raw, spec, source=path.name, first_line=line_of_first_row, lines=lines)


def as_table(data: str | Path | Table, spec: TableSpec | str | Path | None = None) -> Table:
    """A Table as it is, or the file read with the spec: callers that already hold the table don't read it again."""
    return data if isinstance(data, Table) else read_table(data, spec)


READ_CSV = dict(dtype=str, keep_default_na=False, skipinitialspace=False, index_col=False)  # every cell a string


def sniff(path: Path) -> bool:
    """True for a Parquet file, False for a CSV; a file that is neither (missing, a folder, empty, UTF-16, binary)
    is a DataError. Reads the first 64 KiB only."""
    if not path.exists():
        raise DataError(f"{path}: no such file.")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a table file (CSV or Parquet).")
    with path.open("rb") as fh:
        head = fh.read(65536)
    if not head.strip(b" \t\r\n" + codecs.BOM_UTF8):
        raise DataError(f"{path.name} is empty: expected a header line and at least one row.")
    if head.startswith(b"PAR1") or path.suffix.lower() in (".parquet", ".pq"):
        return True
    wide = _wide_unicode(head)
    if wide:
        raise DataError(f"{path.name} is {wide} text; korllama reads UTF-8 (or CP949): save it as UTF-8 CSV.")
    if b"\x00" in head:
        raise DataError(f"{path.name} is not a text file (it contains binary data); expected CSV or Parquet.")
    return False


def _read_raw(path: Path) -> tuple[pd.DataFrame, int, np.ndarray | None]:
    """All cells as strings, so that parsing (and its error messages) is ours. Returns (frame, first row's line,
    each row's line when blank lines make them differ from first row's line + row, else None)."""
    if sniff(path):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for a broken file
            raise DataError(f"{path.name} could not be read as Parquet: {exc}") from None
        _refuse_duplicate_headers(frame.columns, path.name)
        frame = frame.astype(object).where(frame.notna(), "").astype(str)
        return frame.astype(object), 1, None
    text = _decode(path)
    header = next(csv.reader(io.StringIO(text)), [])  # as written: pandas renames a repeated header to "name.1"
    _refuse_duplicate_headers(header, path.name)
    _refuse_other_delimiters(header, path.name)
    try:
        with _warnings.catch_warnings():  # rows longer than the header: pandas warns and drops their last cells
            _warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), **READ_CSV)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name} is empty: expected a header line and at least one row.") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        record_lines(io.StringIO(text), path.name)  # names the line when a row has too many cells
        raise DataError(f"{path.name} is not a well-formed comma-separated file: {' '.join(str(exc).split())}"
                        ) from None
    lines = None
    if _BLANK_LINE.search(text):  # pandas skips blank lines: the rows after one are further down the file
        lines = record_lines(io.StringIO(text), path.name)
        lines = lines if len(lines) == len(frame) else None
    return frame.astype(object), 2, lines


_BLANK_LINE = re.compile(r"\n[ \t\r]*(\n|$)")


def record_lines(text_lines, source: str) -> np.ndarray:
    """The line each record of a CSV starts on (header = line 1; blank lines skipped, as pandas does; a quoted
    value may span lines). A record with more cells than the header is a DataError naming its line."""
    reader = csv.reader(text_lines)
    width = len(next(reader, []))
    starts, after = [], reader.line_num
    for cells in reader:
        blank = len(cells) <= 1 and not "".join(cells).strip()
        if not blank:
            if len(cells) > width:
                raise DataError(f"{source}, line {after + 1}: {len(cells)} cells, but the header names {width} "
                                f"column{'s' * (width != 1)} (a comma too many, or a value holding a comma without "
                                "quotes).")
            starts.append(after + 1)
        after = reader.line_num
    return np.asarray(starts, dtype=np.int64)


def _wide_unicode(head: bytes) -> str | None:
    """'UTF-16' or 'UTF-32' when the bytes are text in one of them (by the byte-order mark, or by the zero byte
    beside every ASCII character that a file without one shows), else None."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            return name
    even, odd = head[0::2], head[1::2]
    if len(odd) >= 8:
        for zeros, others in ((odd, even), (even, odd)):  # little-endian: "a\0"; big-endian: "\0a"
            if zeros.count(0) > 0.3 * len(zeros) and others.count(0) < 0.02 * len(others):
                return "UTF-16"
    return None


def _refuse_other_delimiters(headers, source: str) -> None:
    if len(headers) == 1:
        only = str(headers[0])
        for sep in DELIMITERS:
            if sep in only:
                raise DataError(f"{source}: the header is one column separated by {sep!r}; "
                                "korllama reads comma-separated files (save as CSV with commas).")


def _refuse_duplicate_headers(headers, source: str) -> None:
    seen: dict[str, int] = {}
    for i, h in enumerate(str(h).strip() for h in headers):
        if h in seen:
            raise DataError(f"{source}: the header {h!r} appears twice (columns {seen[h] + 1} and {i + 1}); each "
                            "column needs its own name: rename or remove one.")
        seen[h] = i


def _decode(path: Path) -> str:
    data = path.read_bytes()
    first = None
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            first = first or exc
    line = data.count(b"\n", 0, first.start) + 1
    raise DataError(f"{path.name} is not text in UTF-8 or CP949 (Korean Excel): line {line} holds byte "
                    f"0x{data[first.start]:02x}, which is neither; save it as UTF-8 CSV.")


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

    _refuse_duplicate_headers(raw.columns, source)
    _refuse_other_delimiters(raw.columns, source)
    headers = {str(h).strip(): h for h in raw.columns}

    def find(name: str, alias: str):
        same = [h for h in headers if h in (name, alias) or h.casefold() == alias.casefold()]
        if len(same) > 1:  # "대출기간" and "term": which one would be read is a guess
            raise DataError(f"{source}: the columns {', '.join(repr(h) for h in same)} are all {name} ({alias}); "
                            "keep one.", column=alias)
        for key in (name, alias):
            if key in headers:
                return headers[key]
        lower = {h.casefold(): h for h in headers}
        return lower.get(alias.casefold())

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
        ids = raw[id_col].astype(str).str.strip()
        twins = duplicate_ids(ids)
        if twins is not None:
            first, twin = twins
            also = row_label(first) if row_label is not None else f"on line {line_of(first)}"
            shared = int(ids.duplicated(keep=False).sum())
            raise DataError(f"{where(twin)}, column {id_col}: duplicate ID {ids.iloc[twin]!r} "
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
            raise DataError(f"{where(rows[0])}, column {header}: {value!r} is not allowed; "
                            f"expected {col.allowed}{more}.", row=int(rows[0]), column=col.alias)
        if col.parser == "category" and col.seen is not None and col.unseen is not None:
            unseen = values.notna() & ~values.isin(col.seen)
            if unseen.any():
                kinds = sorted(set(values[unseen]))
                warns.append(f"{source}, column {header}: {unseen.sum()} rows have values never seen in training "
                             f"({', '.join(kinds)}); treated as {col.unseen!r}.")
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
        bad = ~labels.isin(spec.label.classes)
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            raise DataError(f"{where(rows[0])}, column {label_col}: {raw[label_col].iloc[rows[0]]!r} is not a grade; "
                            f"expected one of {', '.join(spec.label.classes)}"
                            + (f" ({len(rows) - 1} more rows like it)." if len(rows) > 1 else "."),
                            row=int(rows[0]), column=spec.label.alias)
        out[spec.label.alias] = labels.to_numpy(dtype=object)

    frame = pd.DataFrame(out)
    add_derived(frame, spec)
    for w in warns:
        _warnings.warn(w, DataWarning, stacklevel=2)
    return Table(frame, spec, source, warns)


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
        args = [frame[a].to_numpy(dtype=float, na_value=np.nan) for a in d.args]
        frame[d.alias] = OPS[d.op](*args, weights=d.weights) if d.weights else OPS[d.op](*args)


def split(table: Table, valid_fraction: float = 0.2, seed: int = 0) -> tuple[Table, Table]:
    """Stratified train/validation split by label (rows keep their order within each part)."""
    from sklearn.model_selection import train_test_split

    if not table.has_labels:
        raise DataError(f"{table.source} has no {table.spec.label.name} column: a split needs labelled rows.")
    counts = table.labels.value_counts()
    need = smallest_split(len(counts), valid_fraction)
    if len(table) < need:  # too few rows for a row of each label on both sides (and scikit-learn's traceback)
        n_valid = math.ceil(valid_fraction * len(table))
        raise DataError(f"{table.source} has {len(table):,} labelled row{'s' * (len(table) != 1)} of {len(counts)} "
                        f"label{'s' * (len(counts) != 1)}: split {len(table) - n_valid}/{n_valid} (valid fraction "
                        f"{valid_fraction:g}), one part cannot hold a row of each label; it needs at least {need} "
                        "rows (or another valid fraction).")
    stratify = table.labels if counts.min() >= 2 else None
    train_idx, valid_idx = train_test_split(
        np.arange(len(table)), test_size=valid_fraction, random_state=seed, stratify=stratify)
    return table.subset(np.sort(train_idx)), table.subset(np.sort(valid_idx))


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


def profile(table: Table) -> dict:
    """What `korllama data check` prints: rows, per-column summary, label distribution, derived by label."""
    frame, spec = table.frame, table.spec
    columns = []
    for col in [*spec.columns, *spec.derived]:
        s = frame[col.alias]
        entry = {"column": col.alias, "header": getattr(col, "name", "(derived)"), "missing": int(s.isna().sum())}
        if getattr(col, "parser", None) == "category":
            top = s.value_counts().head(3)
            entry["summary"] = ", ".join(f"{k} {v / len(s):.0%}" for k, v in top.items())
            entry["distinct"] = int(s.nunique())
        else:
            x = s.astype(float)
            entry.update(min=float(x.min()), median=float(x.median()), max=float(x.max()))
        columns.append(entry)
    result = {"source": table.source, "spec": spec.name, "rows": len(frame), "columns": columns,
              "warnings": table.warnings}
    if table.has_labels:
        counts = table.labels.value_counts().reindex(spec.label.classes, fill_value=0)
        result["labels"] = {k: int(v) for k, v in counts.items()}
        result["derived_median_by_label"] = {
            d.alias: {k: (None if pd.isna(v) else float(v)) for k, v in
                      frame.groupby(spec.label.alias)[d.alias].median().reindex(spec.label.classes).items()}
            for d in spec.derived}
    return result
