"""A table file read in chunks: `TableChunks` checks the whole file first (every chunk validated, IDs unique
across chunks, warnings summed), then yields clean chunks in file order, so that predict and evaluate stream a
table of any size with the same errors `read_table` gives. `InMemoryChunks` is a Table already read, as one chunk.
"""

from __future__ import annotations

import codecs
import csv
import re
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from korllama.data.clean import DataWarning, clean, find_header, refuse_duplicate_headers, refuse_other_delimiters
from korllama.data.read import ENCODINGS, READ_CSV, decode, record_lines, sniff
from korllama.data.table import Table
from korllama.defaults import CHUNK_ROWS
from korllama.errors import DataError, KorllamaError, quote
from korllama.spec import TableSpec, load_spec


@dataclass
class Checked:
    """What a first pass over the whole file found: its rows, and when asked for (to choose rows: a split, a
    sample) every row's ID and label."""

    rows: int
    has_labels: bool
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


class TableChunks:
    """A CSV or Parquet table read `chunk_rows` rows at a time (CSV: pandas' chunked reader; Parquet: pyarrow's
    `iter_batches`), each chunk validated and cleaned by korllama.data.clean with its real line numbers, so an error
    names the same file, line, column and value as `read_table` would.

    `check()` reads the whole file once before anything is scored: every chunk validated, the IDs unique across
    chunks (64-bit hashes, 8 bytes a row; a clash is confirmed on the IDs themselves), the chunks' warnings summed
    into one per column. `chunks()` then yields the clean chunks again, in file order.
    """

    def __init__(self, path: str | Path, spec=None, chunk_rows: int = CHUNK_ROWS):

        if chunk_rows < 1:
            raise KorllamaError(f"chunk_rows must be at least 1, not {chunk_rows}.")
        self.path = Path(path)
        self.spec = spec if isinstance(spec, TableSpec) else load_spec(spec)
        self.chunk_rows = chunk_rows
        self.source = self.path.name
        self.parquet, self.encoding = self._sniff()

    def _sniff(self) -> tuple[bool, str | None]:
        """Parquet or CSV (korllama.data.sniff: the same sentences as read_table for a missing, empty or binary
        file), and for a CSV its encoding — utf-8, utf-8 with BOM or cp949, the whole file decoded once, a block at a
        time, so a bad byte near the end is found before any work — its header checked as read_table checks it, and
        each row's line when blank lines make the lines differ from the rows (8 bytes a row, then)."""

        self.lines = None
        if sniff(self.path):
            return True, None
        for encoding in ENCODINGS:
            try:
                with self.path.open(encoding=encoding, newline="") as fh:
                    header = next(csv.reader(fh), [])
                    blank = False
                    for line in fh:  # decodes the rest; a blank line shifts the lines of the rows after it
                        blank = blank or not line.strip(" \t\r\n")
            except UnicodeDecodeError:
                continue
            refuse_duplicate_headers(header, self.source)
            refuse_other_delimiters(header, self.source)
            if blank:
                self.lines = self._record_lines(encoding)
            if encoding == "utf-8-sig":  # without a BOM plain utf-8 reads the same, and pandas' C parser reads it
                with self.path.open("rb") as fh:  # without a Python decoding layer (a quarter of the memory)
                    encoding = encoding if fh.read(3) == codecs.BOM_UTF8 else "utf-8"
            return False, encoding
        decode(self.path)  # raises read_table's sentence, naming the line of the first bad byte
        raise DataError(f"{self.source} is not text in UTF-8 or CP949 (Korean Excel); save it as UTF-8 CSV.")

    def _record_lines(self, encoding: str) -> np.ndarray:
        """The line each row starts on (korllama.data.record_lines, reading the file as a stream); a row with more
        cells than the header is a DataError naming its line."""

        with self.path.open(encoding=encoding, newline="") as fh:
            return record_lines(fh, self.source)

    def raw_chunks(self):
        """(offset, frame of raw strings) per chunk, in file order: row i of the frame is row offset + i."""
        if self.parquet:
            yield from self._parquet_chunks()
            return

        try:
            reader = pd.read_csv(self.path, encoding=self.encoding, chunksize=self.chunk_rows, **READ_CSV)
            offset = 0
            with reader:
                while True:
                    with _warnings.catch_warnings():  # a row longer than the header: pandas would drop cells
                        _warnings.simplefilter("error", pd.errors.ParserWarning)
                        frame = next(reader, None)
                    if frame is None:
                        break
                    yield offset, frame.astype(object)
                    offset += len(frame)
        except pd.errors.EmptyDataError:
            raise DataError(f"{self.source} is empty: expected a header line and at least one row.") from None
        except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
            self._record_lines(self.encoding)  # names the line when a row has too many cells
            raise DataError(f"{self.source} is not a well-formed comma-separated file: {' '.join(str(exc).split())}"
                            ) from None

    def _parquet_chunks(self):

        def strings(frame):  # read_table's conversion: every cell a string, a missing one ""
            return frame.astype(object).where(frame.notna(), "").astype(str).astype(object)

        try:
            reader = pq.ParquetFile(self.path)
            offset = 0
            for batch in reader.iter_batches(batch_size=self.chunk_rows):
                yield offset, strings(batch.to_pandas())
                offset += batch.num_rows
            if offset == 0:  # no rows at all: one empty chunk, so that clean says so in its words
                yield 0, strings(reader.schema_arrow.empty_table().to_pandas())
        except DataError:
            raise
        except Exception as exc:  # pyarrow raises many types for a broken file
            raise DataError(f"{self.source} could not be read as Parquet: {exc}") from None

    def chunks(self):
        """(offset, clean Table) per chunk, in file order. clean's warnings are kept in each Table's `warnings`
        (check() reports them once, summed) instead of being shown once per chunk."""

        spec, source = self.spec, self.source
        for offset, raw in self.raw_chunks():
            if self.parquet and offset:
                where = {"first_line": 1, "row_label": lambda i, o=offset: f"{source}, row {o + i + 1}"}
            elif self.lines is not None:  # blank lines: each row's own line
                where = {"first_line": 2, "lines": self.lines[offset:offset + len(raw)]}
            else:
                where = {"first_line": 1 if self.parquet else 2 + offset}
            try:
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore", DataWarning)
                    table = clean(raw, spec, source=source, **where)
            except DataError as exc:  # the row within the file, not within the chunk
                raise DataError(str(exc), row=None if exc.row is None else exc.row + offset,
                                column=exc.column) from None
            table.frame.index = range(len(table.frame))  # pandas numbered a chunk's rows from its offset
            if offset and _file_header(raw.columns, spec.id) is None:  # generated IDs go on counting
                table.frame[spec.id.alias] = np.array([f"ROW_{offset + i:05d}" for i in range(len(table))],
                                                      dtype=object)
            yield offset, table

    def check(self, keep: bool = False, warn: bool = True, each=None) -> Checked:
        """Validate the whole file (see the class); `keep` keeps every row's ID and label, `warn` shows the
        warnings; `each(table)` sees every clean chunk on the way (`korllama data check` profiles them)."""

        rows, has_labels, hashes, ids, labels, messages = 0, False, [], [], [], []
        for _, table in self.chunks():
            if each is not None:
                each(table)
            rows += len(table)
            has_labels = table.has_labels
            hashes.append(pd.util.hash_array(table.ids.to_numpy(dtype=object)))
            if keep:
                ids.append(table.ids.to_numpy(dtype=object))
                if has_labels:
                    labels.append(table.labels.to_numpy(dtype=object))
            messages.extend(table.warnings)
        self._check_unique_ids(np.concatenate(hashes))
        summed = sum_warnings(messages)
        if warn:
            for message in summed:
                _warnings.warn(message, DataWarning, stacklevel=2)
        return Checked(rows, has_labels, np.concatenate(ids) if keep else None,
                       np.concatenate(labels) if keep and has_labels else None, summed)

    def _check_unique_ids(self, hashes: np.ndarray) -> None:
        """IDs unique across chunks (clean checks within one): equal hashes are confirmed on the IDs, and the first
        duplicate is reported as clean reports one."""

        ordered = np.sort(hashes)
        twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if not len(twice):
            return
        candidates = set(np.flatnonzero(np.isin(hashes, twice)).tolist())
        header, ids = None, {}
        for offset, raw in self.raw_chunks():
            header = _file_header(raw.columns, self.spec.id)
            for i in (p - offset for p in candidates if offset <= p < offset + len(raw)):
                ids[offset + i] = str(raw[header].iloc[i]).strip()
        values = pd.Series(ids).sort_index()
        dup = values[values.duplicated(keep=False)]
        if dup.empty:  # only a clash of hashes
            return
        twins = dup.index[dup == dup.iloc[0]].tolist()
        if self.parquet:
            where, also = f"{self.source}, row {twins[1] + 1}", f"{self.source}, row {twins[0] + 1}"
        else:
            line = (lambda p: int(self.lines[p])) if self.lines is not None else (lambda p: p + 2)
            where, also = f"{self.source}, line {line(twins[1])}", f"on line {line(twins[0])}"
        raise DataError(f"{where}, column {header}: duplicate ID {quote(dup.iloc[0])} (also {also}); {len(dup)} rows "
                        "share an ID. IDs must be unique.", row=int(twins[1]), column=self.spec.id.alias)


class InMemoryChunks:
    """A Table already in memory, as one chunk: the same interface as TableChunks."""

    def __init__(self, table):
        self.table, self.spec, self.source = table, table.spec, table.source

    def check(self, keep: bool = False, warn: bool = True) -> Checked:
        table = self.table
        return Checked(len(table), table.has_labels, table.ids.to_numpy(dtype=object) if keep else None,
                       table.labels.to_numpy(dtype=object) if keep and table.has_labels else None,
                       list(table.warnings))

    def chunks(self):
        yield 0, self.table


def table_chunks(data, spec=None, chunk_rows: int | None = None):
    """TableChunks for a file, InMemoryChunks for a Table."""

    return InMemoryChunks(data) if isinstance(data, Table) else TableChunks(data, spec, chunk_rows or CHUNK_ROWS)


_UNSEEN = re.compile(r"^(?P<where>.*), column (?P<column>.*): (?P<n>\d+) rows have values never seen in training "
                     r"\((?P<kinds>.*)\); treated as (?P<treated>.*)\.$", re.S)


def sum_warnings(messages: list[str]) -> list[str]:
    """One warning per column for the whole file: clean's per-chunk "N rows have values never seen in training"
    counts added up and their values joined; any other warning once."""
    summed: dict = {}
    for message in messages:
        found = _UNSEEN.match(message)
        if not found:
            summed.setdefault(message, None)
            continue
        key = (found["where"], found["column"], found["treated"])
        n, kinds = summed.get(key) or (0, set())
        summed[key] = (n + int(found["n"]), kinds | set(found["kinds"].split(", ")))
    return [key if value is None else
            f"{key[0]}, column {key[1]}: {value[0]} rows have values never seen in training "
            f"({', '.join(sorted(value[1]))}); treated as {key[2]}."
            for key, value in summed.items()]


def _file_header(columns, column):
    """The file's header for a spec column, as clean finds it."""
    return find_header({str(h).strip(): h for h in columns}, column.name, column.alias)
