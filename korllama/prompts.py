"""Prompt templates: a table row -> an instruction prompt; a label -> its completion.

A template is a Python format string over the clean table's columns (the spec's aliases and derived
features). `{x:d}` writes a whole number, `{x:f}` six decimals (as the original project did), `{x!k}` a
category's raw value (the Korean one for the loan table). A missing value is written as the template's
`missing` text. Every spec gets `compact` (one `alias: value` line per column, derived features included,
made for small models); the loan spec adds `seed`, `seed-clear` and `ko` (korllama/specs/loan/*.txt).

Rendering formats each field for the whole column at once, then joins the pieces column-wise.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from korllama.data import Table
from korllama.errors import ConfigError
from korllama.spec import TableSpec

ANSWER_PREFIX = " "  # the completion is " " + label: " A" is one token for Llama-style tokenizers


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    missing: str = "Unknown"
    about: str = ""

    def render(self, table: Table) -> list[str]:
        """One prompt per row of the table, in order."""
        frame, spec = table.frame, table.spec
        pieces: list[str | pd.Series] = []
        for literal, field, fmt, conversion in string.Formatter().parse(self.text):
            if literal:
                pieces.append(literal)
            if field is None:
                continue
            if field not in frame:
                raise ConfigError(f"template {self.name!r} uses {{{field}}}, which is not a column of spec "
                                  f"{spec.name!r}; columns: {', '.join(frame.columns)}.")
            pieces.append(_format_column(frame[field], fmt or "", conversion, spec, field, self.missing))
        out = pd.Series([""] * len(frame), dtype=object)
        for piece in pieces:
            out = out + piece
        return out.tolist()


def known_fields(spec: TableSpec) -> list[str]:
    """Every column and derived feature of the spec (what the tree baseline reads)."""
    return [c.alias for c in spec.columns] + [d.alias for d in spec.derived]


def carried_fields(template: Template, spec: TableSpec) -> list[str]:
    """The spec's columns and derived features a prompt template shows, in the order they first appear: what an LLM
    grading with it reads."""
    known = set(known_fields(spec))
    found = [field for _, field, _, _ in string.Formatter().parse(template.text) if field in known]
    return list(dict.fromkeys(found))


def answer(label: str) -> str:
    """The completion the model is taught to write after the prompt (EOS is added when tokenising)."""
    return ANSWER_PREFIX + label


def compact_text(spec: TableSpec, fields: list[str] | None = None) -> str:
    """`alias: value` lines for every column and derived feature (or just `fields`, in that order), then the
    label's name as the question."""
    known = {c.alias: c for c in [*spec.columns, *spec.derived]}
    unknown = [f for f in fields or [] if f not in known]
    if unknown:
        raise ConfigError(f"prompt.fields {unknown} are not columns of spec {spec.name!r}; known: {', '.join(known)}.")
    lines = []
    for c in [known[f] for f in fields] if fields else known.values():
        fmt = getattr(c, "format", "") or ("d" if getattr(c, "integer", False) else "")
        lines.append(f"{c.alias}: {{{c.alias}{':' + fmt if fmt else ''}}}")
    return "\n".join(lines) + f"\n{spec.label.alias}:"


def templates(spec: TableSpec, fields: list[str] | None = None) -> dict[str, Template]:
    """Every template available for a spec, by name (`fields` selects the lines of `compact`)."""
    found = {"compact": Template("compact", compact_text(spec, fields), about="key: value lines with derived features")}
    for name, t in spec.templates.items():
        found[name] = Template(name, t.text, t.missing, t.about)
    return found


def get_template(spec: TableSpec, name: str, fields: list[str] | None = None) -> Template:
    available = templates(spec, fields)
    if name not in available:
        raise ConfigError(f"Unknown prompt template {name!r} for spec {spec.name!r}; "
                          f"choose one of: {', '.join(available)}.")
    return available[name]


def render(table: Table, template: str = "compact", fields: list[str] | None = None) -> list[str]:
    return get_template(table.spec, template, fields).render(table)


def _format_column(values: pd.Series, fmt: str, conversion: str | None, spec: TableSpec, field: str,
                   missing: str) -> pd.Series:
    """Format one column as strings; `d` accepts whole floats (NaN-able ints are stored as floats/Int64)."""
    present = values.notna().to_numpy()
    if conversion == "k":  # raw value of a category: invert the raw -> clean mapping
        mapping = spec.column(field).values
        inverse = {v: k for k, v in mapping.items()} if isinstance(mapping, dict) else {}
        formatted = values.map(lambda v: inverse.get(v, v))
    elif fmt.endswith("d"):
        ints = values.to_numpy(dtype=float, na_value=np.nan)
        formatted = pd.Series([format(int(v), fmt) if ok else "" for v, ok in zip(ints, present)], dtype=object)
    elif fmt:
        nums = values.to_numpy(dtype=float, na_value=np.nan)
        formatted = pd.Series([format(v, fmt) if ok else "" for v, ok in zip(nums, present)], dtype=object)
    else:
        formatted = values.astype(object)
    formatted = pd.Series(np.where(present, formatted.astype(str).to_numpy(dtype=object), missing), dtype=object)
    return formatted
