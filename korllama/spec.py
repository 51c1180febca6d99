"""A table's spec as data: columns (header, alias, parser, allowed values), the id column and the label set.

The loan table is the built-in spec (korllama/specs/loan.yaml); any other table is a YAML file of the same
shape (see examples/students/spec.yaml). The parsers turn raw CSV strings into clean values for a whole
column at once and return a mask of the values they could not read, so errors can name the row.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from korllama.errors import ConfigError, quote, yaml_problem

BUILTIN_SPECS = ("loan",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    name: str = Field(description="header in the file (e.g. the Korean one)")
    alias: str = Field(description="English name used in the clean table and accepted as a header")
    parser: Literal["number", "months", "years", "category"] = "number"
    integer: bool = False
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    missing: list[str] = ["Unknown", "unknown", "NA", "N/A", "n/a"]
    # category: a list of allowed values, or a mapping raw -> clean value (clean values are accepted too).
    # number/months: a list of allowed numbers.
    values: list | dict[str, str] | None = None
    seen: list[str] | None = Field(None, description="category values seen in training; others map to `unseen`")
    unseen: str | None = None
    text: str = ""
    format: str = Field("", description="format spec for the `compact` template, e.g. '.1%' or ',d'")
    at_most: str | None = Field(None, description="another column's alias this one should not exceed (principal "
                                                  "repaid <= loan amount): rows above it are read with a warning")

    @model_validator(mode="after")
    def _category_has_values(self):
        if self.parser == "category" and not self.values:
            raise ValueError(f"column {self.alias!r}: a category column needs `values`")
        return self

    @property
    def allowed(self) -> str:
        """What a user may write in this column, for error messages."""
        if self.parser == "category":
            vals = list(self.values) + (list(self.values.values()) if isinstance(self.values, dict) else [])
            return ", ".join(dict.fromkeys(str(v) for v in vals))
        if self.values:
            return ", ".join(str(v) for v in self.values)
        kind = {"months": "a number of months like ' 36 months' or 36",
                "years": "a number of years like '10+ years', '< 1 year', '3 years' or 'Unknown'"}.get(
            self.parser, "a whole number" if self.integer else "a number")
        if self.min is not None:
            kind += f" >= {self.min:g}"
        if self.max is not None:
            kind += f" <= {self.max:g}"
        return kind


class IdSpec(_Strict):
    name: str = "ID"
    alias: str = "id"


class LabelSpec(_Strict):
    name: str
    alias: str = "label"
    classes: list[str] = Field(min_length=2, description="the labels, in their order when `ordinal`")
    ordinal: bool = Field(False, description="the labels are ordered (grades A < B < ...): QWK and near misses "
                                             "are reported")

    @model_validator(mode="after")
    def _distinct_visible_labels(self):
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"label classes appear twice: {self.classes}")
        blank = [c for c in self.classes if not c.strip() or c != c.strip()]
        if blank:
            raise ValueError(f"label classes must be visible text without spaces around them: {blank}")
        return self


class DerivedSpec(_Strict):
    alias: str
    op: Literal["ratio", "implied_annual_rate", "payments_made", "schedule_rate", "weighted_sum"]
    args: list[str]
    weights: list[float] | None = Field(None, description="weighted_sum only: one weight per arg (a rubric)")
    text: str = ""
    format: str = ".4g"

    @model_validator(mode="after")
    def _weights_fit_args(self):
        if (self.op == "weighted_sum") != (self.weights is not None):
            raise ValueError(f"derived {self.alias!r}: `weights` go with op weighted_sum, and it needs them")
        if self.weights is not None and len(self.weights) != len(self.args):
            raise ValueError(f"derived {self.alias!r}: {len(self.weights)} weights for {len(self.args)} args")
        return self


class TemplateSpec(_Strict):
    """A prompt template: a format string over the aliases, inline (`text`) or in a file beside the spec."""

    text: str | None = None
    file: str | None = None
    missing: str = Field("Unknown", description="what a missing value is written as")
    about: str = ""

    @model_validator(mode="after")
    def _one_source(self):
        if (self.text is None) == (self.file is None):
            raise ValueError("a template needs exactly one of `text` or `file`")
        return self


class TableSpec(_Strict):
    name: str
    description: str = ""
    id: IdSpec = IdSpec()
    label: LabelSpec
    columns: list[ColumnSpec] = Field(min_length=1)
    derived: list[DerivedSpec] = []
    templates: dict[str, TemplateSpec] = Field({}, description="prompt templates besides the built-in `compact`")

    @model_validator(mode="after")
    def _names_are_known(self):
        aliases = [c.alias for c in self.columns]
        dupes = {a for a in aliases if aliases.count(a) > 1}
        if dupes:
            raise ValueError(f"column aliases appear twice: {sorted(dupes)}")
        for c in self.columns:
            if c.at_most is not None and c.at_most not in aliases:
                raise ValueError(f"column {c.alias!r}: at_most names {c.at_most!r}, not a column; known: {aliases}")
        for d in self.derived:  # a derived feature may use the columns and the derived features before it
            unknown = [a for a in d.args if a not in aliases]
            if unknown:
                raise ValueError(f"derived {d.alias!r} uses unknown columns {unknown}; known: {aliases}")
            aliases = [*aliases, d.alias]
        return self

    @property
    def label2int(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.label.classes)}

    @property
    def int2label(self) -> dict[int, str]:
        return dict(enumerate(self.label.classes))

    def column(self, alias: str) -> ColumnSpec:
        return next(c for c in self.columns if c.alias == alias)


def load_spec(spec: str | Path | None = None) -> TableSpec:
    """The built-in spec by name ("loan", the default) or a YAML spec file."""
    if spec is None or str(spec) in BUILTIN_SPECS:
        folder = resources.files("korllama.specs")
        path, source = folder.joinpath(f"{spec or 'loan'}.yaml"), f"built-in spec {spec or 'loan'!r}"
    else:
        path = Path(spec)
        if path.is_dir():
            raise ConfigError(f"Spec file {path} is a folder; name the spec's YAML file (e.g. {path / 'spec.yaml'}).")
        if not path.is_file():
            raise ConfigError(f"Spec file {path} does not exist (built-in specs: {', '.join(BUILTIN_SPECS)}).")
        folder, source = path.parent, str(path)
    try:
        parsed = TableSpec.model_validate(yaml.safe_load(path.read_text("utf-8")))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {yaml_problem(exc)}.") from None
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
    templates = {}
    for name, t in parsed.templates.items():
        if t.file is not None:
            file = folder.joinpath(t.file)
            if not file.is_file():
                what = "a folder, not a template file" if file.is_dir() else "which does not exist"
                raise ConfigError(f"{source}: template {name!r} names {t.file}, {what}.")
            t = t.model_copy(update={"text": file.read_text("utf-8"), "file": None})
        check_template(t.text, f"{source}: template {name!r}")
        templates[name] = t
    for c in [*parsed.columns, *parsed.derived]:
        if c.format:
            check_template(f"{{x:{c.format}}}", f"{source}: {c.alias}'s format")
    return parsed.model_copy(update={"templates": templates})


MAX_FORMAT_WIDTH = 64  # characters of one formatted value: a prompt field, not a memory bomb


def check_template(text: str, where: str) -> None:
    """Refuse, in one sentence, a template whose braces or format codes Python cannot use ({final:.0q}), when its
    spec is read rather than when the first row is rendered. A number field is tried with 1 (a `d` code) or 1.0."""
    try:
        fields = [(f, fmt, conv) for _, f, fmt, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{where} is not a valid format string: {exc}.") from None
    for field, fmt, conversion in fields:
        if not fmt or conversion == "k":
            continue
        widths = [int(n) for n in re.findall(r"\d+", fmt)]
        if any(n > MAX_FORMAT_WIDTH for n in widths):  # '>3000000000.2%' would build a 3 GB string per value
            raise ConfigError(f"{where}: {{{field}:{fmt}}} asks for {max(widths):,} characters; a width or "
                              f"precision may be at most {MAX_FORMAT_WIDTH}.")
        try:
            format(1 if fmt.endswith("d") else 1.0, fmt)
        except ValueError as exc:
            raise ConfigError(f"{where}: {{{field}:{fmt}}} has a format code Python cannot use ({exc}); see the "
                              "format mini-language, e.g. .0f, ,d or .1%.") from None


def spec_to_yaml(spec: TableSpec) -> str:
    """A spec as one YAML file that load_spec reads back the same (its templates' text inlined)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's first error as one sentence: the key path, what is wrong, what is allowed."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if err["type"] == "literal_error":
        return f"{where}: {quote(err['input'])} is not allowed ({err['ctx']['expected']})"
    shown = "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict | list)
    got = f" (got {quote(err['input'])})" if shown else ""
    return f"{where}: {err['msg'].removeprefix('Value error, ')}{got}"


# --- parsers: raw strings (a whole column) -> (clean values, mask of unreadable values) -----------------

_MONTHS = re.compile(r"^\s*(\d+)\s*(?:months?)?\s*$", re.IGNORECASE)
_YEARS = re.compile(r"^\s*(<\s*1|\d+\s*\+?)\s*(?:years?)?\s*$", re.IGNORECASE)


def _number(raw: pd.Series, col: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    values = pd.to_numeric(raw.str.strip().str.replace(",", "", regex=False), errors="coerce")
    return values.astype(float), values.isna()


def _months(raw: pd.Series, col: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    values = pd.to_numeric(raw.str.extract(_MONTHS, expand=False), errors="coerce")
    return values.astype(float), values.isna()


def _years(raw: pd.Series, col: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    token = raw.str.extract(_YEARS, expand=False).str.replace(r"\s|\+", "", regex=True)
    values = pd.to_numeric(token.where(~token.str.startswith("<", na=False), "0"), errors="coerce")
    return values.astype(float), values.isna()


def nfc(text: str) -> str:
    """Unicode's composed form: '신용 카드' typed on macOS (NFD: each syllable as letters) reads as the same text."""
    return unicodedata.normalize("NFC", text)


def _category(raw: pd.Series, col: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    mapping = dict(col.values) if isinstance(col.values, dict) else {v: v for v in col.values}
    mapping.update({v: v for v in mapping.values()})  # clean values are accepted as they are
    lookup = {nfc(k.strip()).casefold(): v for k, v in mapping.items()}
    folded = raw.str.strip().str.casefold()
    # composed before the look-up, each distinct value once (a category column holds few): NFD input matches
    distinct = pd.unique(folded)
    values = folded.map({v: lookup.get(nfc(v)) for v in distinct if isinstance(v, str)})
    return values.astype(object), values.isna()


PARSERS: dict[str, Callable[[pd.Series, ColumnSpec], tuple[pd.Series, pd.Series]]] = {
    "number": _number, "months": _months, "years": _years, "category": _category,
}


def parse_column(raw: pd.Series, col: ColumnSpec) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Parse one raw string column: (values, missing mask, bad mask). Missing = empty or a `missing` token."""
    stripped = raw.fillna("").astype(str)
    missing = stripped.str.strip().eq("") | stripped.str.strip().isin(col.missing)
    values, unreadable = PARSERS[col.parser](stripped, col)
    bad = unreadable & ~missing
    if col.parser != "category":
        num = values.to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            bad |= ~missing & ~np.isfinite(num)  # 'inf', '1e400': not a usable number (and no whole number)
            if col.integer:
                bad |= ~missing & (np.mod(num, 1) != 0) & np.isfinite(num)
                bad |= ~missing & (np.abs(num) > 2**53)  # past this a float no longer holds every whole number
            if col.min is not None:
                bad |= ~missing & (num < col.min)
            if col.max is not None:
                bad |= ~missing & (num > col.max)
            if col.values:
                bad |= ~missing & ~np.isin(num, np.asarray(col.values, dtype=float))
    return values.where(~missing), missing, bad
