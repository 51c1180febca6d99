"""Read a table file (CSV in utf-8 / utf-8-sig / cp949, or Parquet) into a clean Table.

`read_table(path, spec)` -> `Table`: the file sniffed, decoded and read as strings, then cleaned
(korllama.data.clean). Every problem with the file is a DataError whose message names the file, the line, the
column, the value and what is allowed; nothing is half-read. korllama.data.stream reads the same files in chunks.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import warnings as _warnings
from pathlib import Path

import numpy as np
import pandas as pd

from korllama.data.clean import clean, refuse_duplicate_headers, refuse_other_delimiters
from korllama.data.table import Table
from korllama.errors import DataError
from korllama.spec import TableSpec, load_spec

ENCODINGS = ("utf-8-sig", "cp949")  # utf-8-sig reads plain utf-8 too

# The csv module refuses a field over 128 KiB with `_csv.Error`; pandas reads any size. A huge field is the
# cleaner's to refuse, with its sentence (korllama.errors.quote shows a piece of it), so the csv module takes all.
csv.field_size_limit(2**31 - 1)


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
        refuse_duplicate_headers(frame.columns, path.name)
        frame = frame.astype(object).where(frame.notna(), "").astype(str)
        return frame.astype(object), 1, None
    text = decode(path)
    header = next(csv.reader(io.StringIO(text)), [])  # as written: pandas renames a repeated header to "name.1"
    refuse_duplicate_headers(header, path.name)
    refuse_other_delimiters(header, path.name)
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



def decode(path: Path) -> str:
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

