"""The service's request and answer types, built from the table's spec, so that /openapi.json carries the spec's
rules (enums for categories and fixed values, bounds for numbers, the raw string forms the parser accepts, the ID
pattern) and pydantic enforces exactly what the schema says."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, create_model

from korllama.serve.errors import MAX_TEXT
from korllama.spec import ColumnSpec, TableSpec

Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT)]  # pydantic refuses "\ud800" (string_unicode)
# An ID of visible text (korllama.data.clean refuses an empty one, a control or a direction character) and without
# NUL: the service marks an applicant sent without one "\x00<i>" (korllama.serve.batching), which such an ID could
# repeat, and a duplicate ID is refused.
_ODD = "\\x00-\\x1f\\x7f\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"
Id = Annotated[Text, Field(pattern=f"^[^{_ODD}]*[^\\s{_ODD}][^{_ODD}]*$")]


def applicant_model(spec: TableSpec):
    """One applicant: a field per column, keyed by its alias or its header, an optional ID, nothing else. Each field
    carries the spec's rules (`value_type`), so that /openapi.json says what is accepted and pydantic refuses what
    it does not say: every schema-valid applicant is one `korllama.data.clean` accepts (tests/test_serve_schema.py)."""
    def field(col, kind, required: bool, description: str):
        return (kind, Field(... if required else None, title=col.alias, description=description,
                            validation_alias=AliasChoices(*dict.fromkeys([col.alias, col.name]))))

    fields = {}
    for i, col in enumerate(spec.columns):
        header = f" (or the header {col.name!r})" if col.name != col.alias else ""
        fields[f"c{i}"] = field(col, value_type(col), not col.nullable,
                                f"{col.text or col.alias}{header}. Allowed: {col.allowed}"
                                + ("; may be null or left out." if col.nullable else "."))
    fields["row_id"] = field(spec.id, StrictInt | Id | None, False, "optional: echoed back in the result; unique "
                                                                    "within a request")
    return create_model("Applicant", __config__=ConfigDict(extra="forbid"), **fields)


def value_type(col: ColumnSpec):
    """A column's JSON values: a category's values as strings (an enum); a number as a JSON number within the
    column's bounds (a whole one for whole-number columns, one of the allowed values where there are some) or as a
    string in a raw form the parser reads (`raw_pattern`); null, blank or a missing token where it is nullable."""
    pattern = raw_pattern(col)
    raw = [] if pattern is None else [Annotated[Text, Field(pattern=pattern)]]
    if col.parser == "category":  # the enum for clients, the same strings as a pattern for pydantic to check
        kinds = [Annotated[Text, Field(pattern=pattern, json_schema_extra={"enum": spellings(col)})]]
    elif col.values:
        kinds = [Literal[tuple(col.values)], *raw]
    else:
        whole = col.integer or col.parser != "number"  # months and years are whole numbers
        low = col.min if col.min is not None else -WHOLE if whole else None
        low = max(low, 0) if col.parser != "number" else low  # their raw form has no sign
        high = min(col.max, WHOLE) if col.max is not None else WHOLE if whole else sys.float_info.max
        number = [Annotated[StrictInt, Field(ge=low, le=high)],  # a float of a whole value too ("type": "integer")
                  Annotated[float, Field(strict=True, ge=low, le=high, multiple_of=1), BeforeValidator(_not_int)]] \
            if whole else \
            [Annotated[float, Field(strict=True, ge=low, le=high, allow_inf_nan=False)]]  # ints are numbers too
        kinds = [*number, *raw]
    kind = kinds[0]
    for other in kinds[1:]:
        kind = kind | other
    return kind | None if col.nullable else kind


def _not_int(value):
    """The float branch of a whole-number column: an int is judged by the int branch alone (a float would round
    2**53 + 1 into the bounds)."""
    if isinstance(value, int):
        raise ValueError("out of bounds")
    return value


WHOLE = 2**53  # the largest whole number korllama.spec.parse_column accepts (past it a float skips some)
SPACE = " *"  # the raw forms are padded with spaces (" 36 months"); the parsers strip any whitespace
MONTHS, YEARS = "[mM][oO][nN][tT][hH][sS]?", "[yY][eE][aA][rR][sS]?"  # _MONTHS, _YEARS: any case


def raw_pattern(col: ColumnSpec) -> str | None:
    """A regular expression for the strings the column's parser reads as an allowed value, written in the syntax
    JSON Schema, Python and Rust (pydantic) share. It is exact for categories and missing tokens; for numbers it
    is the plain decimal forms ("16800000", "19.64", "007", "1,234.5", " 36 months", "10+ years", "< 1 year")
    within the column's bounds, without exponents ("1.2e7") or other whitespace than spaces: the value a decimal in
    exponent form stands for is not a regular language, and pandas reads "+96824511081009.00000000000" as
    96824511081008.98 (a whole number that is not), so no "+" either. None where no bounded plain form is written
    here (a lower bound above 0, a fractional or negative upper bound, allowed values that are not whole numbers):
    such a column is sent as a JSON number."""
    missing = [""] + col.missing if col.nullable else []
    if col.parser == "category":
        return f"^(?:{'|'.join(_escape(v) for v in spellings(col))})$"
    if col.min not in (None, 0) or (col.max is not None and (col.max < 1 or col.max != int(col.max))):
        return None
    whole = col.integer or col.parser != "number"
    if col.values:
        if any(float(v) < 0 or float(v) != int(float(v)) for v in col.values):
            return None
        digits = "0*(?:" + "|".join(str(int(float(v))) for v in col.values) + ")"
    else:
        digits = _upto(min(int(col.max), WHOLE) if col.max is not None else WHOLE) if whole else None
    if col.parser == "months":
        return _anchored([f"{digits}{SPACE}(?:{MONTHS})?"], missing)
    if col.parser == "years":
        return _anchored([f"(?:<{SPACE}1|{digits}{SPACE}\\+?){SPACE}(?:{YEARS})?"], missing)
    point = "(?:\\.0*)?" if whole else "(?:\\.[0-9]*)?"
    if digits is not None:  # whole numbers, or one of the allowed values
        forms = [f"{digits}{point}"]
        if col.max is None and not col.values:  # thousands separated: at most 15 digits, below WHOLE
            forms.append(f"[0-9]{{1,3}}(?:,[0-9]{{3}}){{1,4}}{point}")
    elif col.max is not None:  # a fraction up to a whole maximum
        forms = [f"{_upto(int(col.max) - 1)}{point}", f"0*{int(col.max)}(?:\\.0*)?"]
    else:
        forms = [f"[0-9]+{point}", f"[0-9]{{1,3}}(?:,[0-9]{{3}})+{point}"]
    if col.min is None:  # any sign: below 0 only the magnitude is bounded (a whole number's by WHOLE)
        forms.append(f"-{_upto(WHOLE) if whole else '[0-9]+'}{point}")
    return _anchored(forms, missing)


def spellings(col: ColumnSpec) -> list[str]:
    """A category's strings as the CSV has them: raw and clean values (and blank or a missing token if nullable).
    The parser also reads them in any case and padded with whitespace; the schema lists one spelling each."""
    values = [*col.values, *(col.values.values() if isinstance(col.values, dict) else [])]
    return list(dict.fromkeys(str(v) for v in [*values, *([""] + col.missing) * col.nullable]))


def _anchored(forms: list[str], missing: list[str]) -> str:
    tokens = "|".join(_escape(m) for m in missing if m)
    blank = [f"(?:{tokens})?"] if missing else []
    return f"^{SPACE}(?:{'|'.join([*forms, *blank])}){SPACE}$"


def _escape(text: str) -> str:
    """`re.escape` for the characters every regex dialect treats as special (Python's escapes more, which some
    JSON Schema validators refuse)."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", text)


def _upto(n: int) -> str:
    """A regular expression for the decimal whole numbers 0..n, leading zeros allowed."""
    digits = str(n)
    alts = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    rest = [f"[0-9]{{{len(digits) - i - 1}}}" if i < len(digits) - 1 else "" for i in range(len(digits))]
    alts += [digits[:i] + (f"[0-{int(d) - 1}]" if d != "1" else "0") + rest[i]  # n's first i digits, then less
             for i, d in enumerate(digits) if d != "0"]
    return f"0*(?:{'|'.join([*alts, digits])})"


def result_model(spec: TableSpec):
    """The answer for one applicant, in the spec's own labels."""
    label, classes, Label = spec.label.alias, ", ".join(spec.label.classes), Literal[tuple(spec.label.classes)]
    return create_model(
        "GradeResult", __doc__=f"The {label} of one applicant.",
        id=(str | None, Field(description=f"the applicant's {spec.id.name}/{spec.id.alias} as sent, or null")),
        grade=(Label, Field(description=f"the {label}: the most probable of {classes}")),
        probabilities=(dict[Label, float], Field(description=f"P({label}) for each of {classes} (rank scoring; "
                                                             "they sum to 1)")),
        template=(str, Field(description="the prompt template the run was trained with")),
        decision=(Literal["argmax", "macro-f1"], Field(description="how the grade was chosen from the probabilities: "
                                                       "the most probable, or the run's macro-F1 decision rule")),
        reasons=(list[Reason] | None, Field(None, description="with ?explain=true: the top reasons, best first")))


class Reason(BaseModel):
    """Why: the change in the grade's probability when one field is set to its typical (neutral) value."""

    field: str = Field(description="the field (the spec's English alias)")
    value: Any = Field(description="the applicant's value")
    reference: Any = Field(description="the neutral value: the training median, or the most frequent category")
    delta: float = Field(description="P(grade) minus P(grade) with the field neutral: positive = it raises the grade")
    deltas: dict[str, float] = Field(description="the same change for every label")
    text: str = Field(description="the reason in words")


def example_applicant(spec: TableSpec) -> dict:
    """The docs' example, from the spec alone: each column by its header with its first allowed value (a category's
    first raw value), else the middle of its range, else its minimum (or 0)."""
    def value(col: ColumnSpec):
        if col.values:
            return next(iter(col.values))
        return (col.min + col.max) / 2 if col.min is not None and col.max is not None else col.min or 0
    return {spec.id.name: "EXAMPLE_1"} | {col.name: value(col) for col in spec.columns}


# --- the schema's prose as plain text ------------------------------------------------------------------------------

PROSE = ("description", "summary")  # Swagger UI and ReDoc render these as Markdown, raw HTML included
DATA = ("example", "examples", "enum", "const", "default")  # values, shown as values (JSON), never as Markdown
NAMED = ("properties", "patternProperties", "$defs", "schemas", "paths", "responses", "content", "securitySchemes",
         "headers", "requestBodies")  # maps from a name (a spec's header, say) to an object: every entry is walked
MARKUP = re.compile(r"([\\`*_\[\]()!#|~{}])")


def plain(text: str) -> str:
    """Text that Markdown (CommonMark, marked, remarkable) shows as it is: HTML's special characters as entities,
    Markdown's as backslash escapes, so that no tag, link or image can come of it."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MARKUP.sub(r"\\\1", text)


def plain_prose(node: Any, named: bool = False) -> Any:
    """The OpenAPI schema with every description and summary as `plain` text, whatever it came from (a spec's
    column descriptions, headers, labels and allowed values, a run's name): the docs pages render it as Markdown."""
    if isinstance(node, list):
        return [plain_prose(x) for x in node]
    if not isinstance(node, dict):
        return node
    if named:
        return {k: plain_prose(v) for k, v in node.items()}
    return {k: plain(v) if k in PROSE and isinstance(v, str) else v if k in DATA else plain_prose(v, k in NAMED)
            for k, v in node.items()}
