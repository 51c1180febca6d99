"""What the service refuses, and how it says so: limits (body size, applicants, text), a JSON-only route, and
pydantic's errors turned into sentences naming the applicant, the field and what is allowed (one
RequestValidationError handler uses `Phrasing`)."""

from __future__ import annotations

import asyncio
import codecs
import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers

from korllama.serve.batching import as_text, problem
from korllama.spec import ColumnSpec, TableSpec

MAX_BODY_BYTES = 4 * 1024 * 1024  # 1,024 applicants with Korean keys and raw values are about 0.7 MiB
MAX_TEXT = 200  # characters in one value: no real cell is longer, and error messages quote the value
MAX_ERRORS = 20  # problems listed in one 422 answer
SEND = "send one applicant (a JSON object) or a list of them"
PARSE_OFF_LOOP = 64 * 1024  # a body larger than this is parsed on a thread: the event loop goes on answering
CHECK_OFF_LOOP = 64  # a list of more applicants is validated on a thread first (Phrasing.check_each)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()  # "\\ud800": text
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


class NotJSON(str):
    """Why a body is not read as JSON: the whole sentence. It is handed to validation as the body (which fails)
    rather than raised at once, so that FastAPI checks the token first; the 422 handler says it."""


class _Duplicate(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object whose keys are unique: a repeated key would silently keep its last value (RFC 8259 leaves it to
    the reader), so the sender's first value would not be the one graded."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _Duplicate(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def parse_json(data: bytes) -> Any:
    """The body as JSON (RFC 8259): UTF-8 without a byte order mark, no NaN or Infinity, no key twice in an object;
    otherwise a NotJSON sentence. Python's json.loads would read UTF-16 and UTF-32 and skip a UTF-8 BOM."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or \
            b"\x00" in data[:4]:  # JSON text starts with ASCII: a NUL among its first bytes is UTF-16 or UTF-32
        return NotJSON(f"the body looks like UTF-16 or UTF-32; JSON is read as UTF-8 (RFC 8259): {SEND} as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        return NotJSON(f"the body starts with a byte order mark (U+FEFF), which JSON does not allow: {SEND} as "
                       "UTF-8 without one")

    def refuse(name: str):
        raise ValueError(f"{name} is not a JSON number")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse, object_pairs_hook=_unique_keys)
    except _Duplicate as exc:
        return NotJSON(f"the body gives the key {_show(exc.args[0])} twice in one object; send each key once")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        return NotJSON(f"the body is not valid JSON ("
                       f"{'it is nested too deeply' if isinstance(exc, RecursionError) else exc}); {SEND}")


class StrictJSONRoute(APIRoute):
    """JSON as the standard has it (`parse_json`): NaN, Infinity, text that is not UTF-8, a repeated key and
    nesting too deep for Python's parser are not JSON (a 422), rather than a value, a 400 or a 500. A large body is
    parsed on a thread (the object hook lets the event loop run between objects), not on the event loop."""

    class StrictRequest(Request):
        async def json(self) -> Any:
            if not hasattr(self, "_json"):
                data = await self.body()
                self._json = await asyncio.to_thread(parse_json, data) if len(data) > PARSE_OFF_LOOP else \
                    parse_json(data)
            return self._json

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def strict(request: Request):
            return await handle(self.StrictRequest(request.scope, request.receive))
        return strict


class Phrasing:
    """`sentences(errors, body)`: pydantic's errors about a body, one sentence per applicant and field. `screen` and
    `check_each` judge a body before FastAPI validates it whole on the event loop."""

    def __init__(self, spec: TableSpec, max_applicants: int, applicant: type[BaseModel] | None = None):
        self.spec, self.max_applicants, self.applicant = spec, max_applicants, applicant
        self.by_key: dict[str, ColumnSpec | None] = {spec.id.alias: None, spec.id.name: None}  # None: the ID
        self.by_key.update({key: col for col in spec.columns for key in (col.alias, col.name)})

    def sentences(self, errors: list[dict], body: Any) -> list[dict]:
        if isinstance(body, NotJSON):
            return [problem([], str(body), "json_invalid")]
        many, groups, params = isinstance(body, list), {}, []
        for err in errors:
            if err["loc"][0] != "body":  # a query parameter (?top=21, ?explain=maybe)
                params.append(self.parameter(err))
                continue
            loc = err["loc"][1:]  # after "body": the union's branch, then [index,] field
            if not loc:
                return [*params, problem([], f"the body is empty; {SEND}", "json_invalid")]
            if (loc[0] != "Applicant") == many:  # the branch the body took (an object: Applicant; a list: list[...])
                key = (loc[1] if many and len(loc) > 1 else None, loc[1 + many] if len(loc) > 1 + many else None)
                groups.setdefault(key, []).append(err)
        shown = list(groups.items())[:MAX_ERRORS]  # only these are phrased: a body may hold thousands of problems
        out = params + [self.sentence(i, key, errs, body) for (i, key), errs in shown]
        more = f"... and {len(groups) - len(shown)} more problems like these"
        return out if len(groups) <= MAX_ERRORS else [*out, problem([], more, "too_many_errors")]

    @staticmethod
    def parameter(err: dict) -> dict:
        """A query (or path) parameter's error, as pydantic words it, in one sentence."""
        where, name = err["loc"][0], err["loc"][-1]
        msg = err["msg"][:1].lower() + err["msg"][1:]
        sent = f"={_show(err['input'])}" if "input" in err and err["type"] != "missing" else ""
        return {"loc": [where, name], "msg": f"the {where} parameter {name}{sent} is not allowed: {msg}",
                "type": err["type"]}

    def screen(self, body: Any) -> list[dict] | None:
        """The first unknown key of a body, said at once (a 422), before pydantic lists every one of them: a body of
        1,024 applicants with 300 unknown keys each would otherwise be 300,000 errors built on the event loop."""
        many = isinstance(body, list)
        for i, applicant in enumerate(body if many else [body]):
            if not isinstance(applicant, dict):
                continue
            for key in applicant:
                if key not in self.by_key:
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        kind = "string_unicode"
                        return [self.sentence(i if many else None, None, [{"type": kind, "input": key}], body)]
                    return [self.sentence(i if many else None, key, [{"type": "extra_forbidden", "input": key}],
                                          body)]
        return None

    def check_each(self, body: list) -> list[dict] | None:
        """A list's applicants validated one by one (on a thread: the event loop runs between them), its problems in
        sentences, or None when all are valid. Up to 1,024 applicants with every field wrong are some 50,000
        pydantic errors, half a second of work that would otherwise hold the event loop."""
        errors = []
        for i, item in enumerate(body):
            try:
                self.applicant.model_validate(item)
            except ValidationError as exc:
                errors += [err | {"loc": ("body", "list", i, *err["loc"])}
                           for err in exc.errors(include_url=False, include_context=False)]
        return self.sentences(errors, body) if errors else None

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
