"""What the service refuses, and how it says so: limits (body size, applicants, text), a JSON-only route, and
pydantic's errors turned into sentences naming the applicant, the field and what is allowed (one
RequestValidationError handler uses `Phrasing`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers

from korllama.schema import ColumnSpec, TableSpec
from korllama.serve.batching import as_text, problem

MAX_APPLICANTS = 1024
MAX_BODY_BYTES = 4 * 1024 * 1024  # 1,024 applicants with Korean keys and raw values are about 0.7 MiB
MAX_TEXT = 200  # characters in one value: no real cell is longer, and error messages quote the value
MAX_ERRORS = 20  # problems listed in one 422 answer
SEND = "send one applicant (a JSON object) or a list of them"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()  # "\\ud800": text
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


class NotJSON(str):
    """Why a body does not parse. It is handed to validation as the body (which fails) rather than raised at once, so
    that FastAPI checks the token first; the 422 handler says it."""


class StrictJSONRoute(APIRoute):
    """JSON as the standard has it: NaN, Infinity, text that is not UTF-8 and nesting too deep for Python's parser
    are not JSON (a 422), rather than a value, a 400 or a 500."""

    class StrictRequest(Request):
        async def json(self) -> Any:
            if not hasattr(self, "_json"):
                def refuse(name: str):
                    raise ValueError(f"{name} is not a JSON number")
                try:
                    self._json = json.loads(await self.body(), parse_constant=refuse)
                except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
                    self._json = NotJSON("it is nested too deeply" if isinstance(exc, RecursionError) else str(exc))
            return self._json

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def strict(request: Request):
            return await handle(self.StrictRequest(request.scope, request.receive))
        return strict


class Phrasing:
    """`sentences(errors, body)`: pydantic's errors about a body, one sentence per applicant and field."""

    def __init__(self, spec: TableSpec, max_applicants: int):
        self.spec, self.max_applicants = spec, max_applicants
        self.by_key: dict[str, ColumnSpec | None] = {spec.id.alias: None, spec.id.name: None}  # None: the ID
        self.by_key.update({key: col for col in spec.columns for key in (col.alias, col.name)})

    def sentences(self, errors: list[dict], body: Any) -> list[dict]:
        if isinstance(body, NotJSON):
            return [problem([], f"the body is not valid JSON ({body}); {SEND}", "json_invalid")]
        many, groups = isinstance(body, list), {}
        for err in errors:
            loc = err["loc"][1:]  # after "body": the union's branch, then [index,] field
            if not loc:
                return [problem([], f"the body is empty; {SEND}", "json_invalid")]
            if (loc[0] != "Applicant") == many:  # the branch the body took (an object: Applicant; a list: list[...])
                key = (loc[1] if many and len(loc) > 1 else None, loc[1 + many] if len(loc) > 1 + many else None)
                groups.setdefault(key, []).append(err)
        out = [self.sentence(i, key, errs, body) for (i, key), errs in groups.items()]
        more = f"... and {len(out) - MAX_ERRORS} more problems like these"
        return out if len(out) <= MAX_ERRORS else [*out[:MAX_ERRORS], problem([], more, "too_many_errors")]

    def sentence(self, i: int | None, key: str | None, errs: list[dict], body: Any) -> dict:
        kinds, first = {e["type"] for e in errs}, errs[0]
        where, at = ("applicant", []) if i is None else (f"applicants[{i}]", [i])
        if key is None and "string_unicode" in kinds:  # pydantic cannot even read a key
            return problem(at, f"{where}: a field name holds an unpaired surrogate, which is not text; send valid "
                                "Unicode", "string_unicode")
        if key is None and i is None:  # the body as a whole
            if "too_long" in kinds:
                return problem([], f"{len(body):,} applicants in one request; at most {self.max_applicants:,} are "
                                    "allowed (split them over several requests)", "too_long")
            if "too_short" in kinds:
                return problem([], "the list of applicants is empty", "too_short")
            return problem([], f"the body is a JSON {_json_type(body)}; {SEND}", "body_type")
        if key is None:
            return problem(at, f"{where} is a JSON {_json_type(first['input'])}; expected an object whose keys are "
                                "the table's fields", "model_type")
        col, loc = self.by_key.get(key, False), [*at, key]
        name = key if col is False else self.spec.id.alias if col is None else \
            col.alias if col.name == col.alias else f"{col.alias} ({col.name})"
        if "missing" in kinds:
            return problem(loc, f"{where}: the field {name} is missing; expected {col.allowed}", "missing")
        if "extra_forbidden" in kinds and col is not False:
            return problem(loc, f"{where}: {name} is given twice (once by its header, once by its English name); "
                                 "send it once", "extra_forbidden")
        if "extra_forbidden" in kinds:
            return problem(loc, f"{where}: unknown field {key!r}; the fields are "
                                 f"{', '.join(c.alias for c in self.spec.columns)} (or their headers) and "
                                 f"{self.spec.id.alias}", "extra_forbidden")
        if "string_unicode" in kinds:  # valid JSON ("\\ud800"), but not text: it could not even be written back
            return problem(loc, f"{where}, column {key}: {_show(first['input'])} holds an unpaired surrogate, which "
                                 "is not text; send valid Unicode", "string_unicode")
        if "string_too_long" in kinds:
            return problem(loc, f"{where}, column {key}: the value is longer than {MAX_TEXT} characters",
                            "string_too_long")
        value = first["input"]
        if col and isinstance(value, str | int | float) and not isinstance(value, bool):  # the type is right
            named = col.alias if col.name == col.alias else f"{col.alias} ({col.name})"  # as clean's sentences say
            return problem([*at, col.alias], f"{where}, column {named}: {as_text(value)!r} is not allowed; expected "
                                             f"{col.allowed}.", "value_error")
        return problem(loc, f"{where}, column {key}: {_show(value)} is not allowed; expected "
                            f"{col.allowed if col else 'a whole number or a string without NUL'}", "type_error", value)


class SafeJSONResponse(JSONResponse):
    """An error answer may quote what was sent: an unpaired surrogate is written as its JSON escape."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


class BodyLimit:
    """ASGI middleware: a POST body over `limit` bytes (declared, or counted as it arrives) is a 413 naming the
    limit; the body is read here (never more than the limit) and handed on whole. The `exempt` paths stream their
    bodies and check their own limit (the page's file upload, korllama.serve.page)."""

    def __init__(self, app, limit: int, exempt: frozenset[str] = frozenset()):
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        declared, chunks, more = Headers(scope=scope).get("content-length", ""), [], True
        size = int(declared) if declared.isdigit() and int(declared) > self.limit else 0  # over: refused unread
        while more and size <= self.limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # nobody to answer
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
        if size > self.limit:
            too_big = f"the body is larger than {self.limit:,} bytes; send fewer applicants per request"
            return await SafeJSONResponse({"detail": too_big}, status_code=413)(scope, receive, send)
        whole = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():  # the body in one message, then whatever comes (a disconnect)
            return whole.pop() if whole else await receive()
        await self.app(scope, replay, send)
