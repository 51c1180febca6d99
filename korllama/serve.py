"""An HTTP scoring service for a tuned run: `korllama serve RUN` (FastAPI + uvicorn). See README, "Serving".

`POST /v1/grade` takes `Applicant | list[Applicant]` as JSON, the Applicant model built from the run's spec, so
FastAPI and pydantic check the shape; the values are then validated and cleaned by `korllama.data.clean`, as
`korllama predict` does for a file, and scored in micro-batches (korllama.batching). One RequestValidationError
handler turns pydantic's errors into sentences naming the applicant, the field and what is allowed (422); a body over
the size limit is a 413 (middleware), one not sent as JSON a 415, a missing or wrong bearer token (when `$token_env`
is set) a 401, before anything else is said about the body. A 5xx is a bug. `GET /health` says what is served;
`/docs` and `/redoc` load their scripts from this service (fastapi-offline), not from a CDN.
"""

import hmac
import json
import os
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, conlist, create_model
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from korllama import __version__
from korllama.batching import Applicants, Batcher, Grader, as_text, problem
from korllama.data import Table
from korllama.errors import KorllamaError
from korllama.explain import explain_rows
from korllama.run import Run
from korllama.schema import ColumnSpec, TableSpec
from korllama.scoring import predict_labels

MAX_APPLICANTS = 1024
MAX_BODY_BYTES = 4 * 1024 * 1024  # 1,024 applicants with Korean keys and raw values are about 0.7 MiB
MAX_TEXT = 200  # characters in one value: no real cell is longer, and error messages quote the value
MAX_ERRORS = 20  # problems listed in one 422 answer
SEND = "send one applicant (a JSON object) or a list of them"
Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT)]  # pydantic refuses "\ud800" (string_unicode)


# --- the API's types, from the spec ------------------------------------------------------------------------------

def applicant_model(spec: TableSpec):
    """One applicant: a field per column, keyed by its alias or its header (a category is a string; a number may be
    a string too, raw as in the CSV; a nullable column may be null or left out), an optional ID, nothing else."""
    def field(col, kind, required: bool, description: str):
        return (kind, Field(... if required else None, title=col.alias, description=description,
                            validation_alias=AliasChoices(*dict.fromkeys([col.alias, col.name]))))

    fields = {}
    for i, col in enumerate(spec.columns):
        kind = Text if col.parser == "category" else StrictInt | StrictFloat | Text
        header = f" (or the header {col.name!r})" if col.name != col.alias else ""
        fields[f"c{i}"] = field(col, kind | None if col.nullable else kind, not col.nullable,
                                f"{col.text or col.alias}{header}. Allowed: {col.allowed}"
                                + ("; may be null or left out." if col.nullable else "."))
    fields["row_id"] = field(spec.id, StrictInt | Text | None, False, "optional: echoed back in the result")
    return create_model("Applicant", __config__=ConfigDict(extra="forbid"), **fields)


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


# --- 422s: pydantic's errors as sentences naming the applicant, the field and what is allowed --------------------

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
        return problem(loc, f"{where}, column {key}: {_show(first['input'])} is not allowed; expected "
                             f"{col.allowed if col else 'a string or a whole number'}", "type_error", first["input"])


class SafeJSONResponse(JSONResponse):
    """An error answer may quote what was sent: an unpaired surrogate is written as its JSON escape."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


class BodyLimit:
    """ASGI middleware: a POST body over `limit` bytes (declared, or counted as it arrives) is a 413 naming the
    limit; the body is read here (never more than the limit) and handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
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


# --- the app -----------------------------------------------------------------------------------------------------

def create_app(run: Run, token_env: str = "KORLLAMA_TOKEN", max_batch: int = 64, max_wait_ms: float = 10,
               max_body_bytes: int = MAX_BODY_BYTES, max_applicants: int = MAX_APPLICANTS,
               decision: str = "argmax") -> FastAPI:
    """The scoring service for a run (its model is loaded here, once). `decision`: the grade is the most probable
    label (argmax) or the run's macro-F1 decision rule's (korllama.decision)."""
    if max_batch < 1 or max_wait_ms < 0 or max_body_bytes < 1 or max_applicants < 1:
        raise KorllamaError("max_batch, max_body_bytes and max_applicants must be at least 1 and max_wait_ms at "
                            "least 0.")
    run_dir = run.root
    rule = run.rule(decision)
    model, tokenizer, config = run.model, run.tokenizer, run.config  # safetensors only, for every command
    spec, template, classes = run.spec, run.template, run.classes
    max_tokens = run.max_tokens
    token = os.environ.get(token_env) or None
    Applicant, GradeResult, phrasing = applicant_model(spec), result_model(spec), Phrasing(spec, max_applicants)

    def answer(applicants: Applicants, table: Table, proba: np.ndarray, reasons) -> list[dict]:
        """One result per applicant, in order (fields declared in `result_model`)."""
        grades = rule.apply(proba) if rule is not None else predict_labels(proba, classes)
        return [{"id": applicants.ids[i], "grade": grade, "template": template.name, "decision": decision,
                 "probabilities": {c: float(x) for c, x in zip(classes, p)}}
                | ({"reasons": reasons[i]} if reasons is not None else {})
                for i, (p, grade) in enumerate(zip(proba, grades))]

    references: dict = {}  # the run's neutral values for reasons, read on the first request that asks

    def explainer(table: Table, top: int):
        if not references:
            references.update(run.references)
        return explain_rows(model, tokenizer, template, table, references, classes, top, max_batch)

    grader = Grader(model, tokenizer, template, spec, max_batch, max_tokens, explainer)
    batcher = Batcher(grader, max_batch, max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await batcher.aclose()

    app = FastAPIOffline(  # FastAPI whose /docs and /redoc load their scripts from this service, not from a CDN
        title="korllama", version=__version__, lifespan=lifespan,
        description=f"Grades applicants with the tuned run `{run_dir.name}` (rank scoring over {spec.label.alias} "
                    f"{', '.join(classes)}). Keys: the table's headers or English aliases; values raw as in the CSV "
                    "or clean.")
    app.router.route_class = StrictJSONRoute
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.state.batcher, app.state.stats, app.state.run_dir = batcher, grader.stats, run_dir

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        return SafeJSONResponse({"detail": phrasing.sentences(exc.errors(), exc.body)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _refused(_request: Request, exc: StarletteHTTPException):
        return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    bearer = HTTPBearer(auto_error=False, description=f"the token in the server's ${token_env}")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        if not hmac.compare_digest(credentials.credentials.encode() if credentials else b"", token.encode()):
            raise HTTPException(401, f"a valid bearer token is required: send 'Authorization: Bearer <token>' (the "
                                     f"token is the server's ${token_env})", headers={"WWW-Authenticate": "Bearer"})

    async def require_json(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            raise HTTPException(415, f"the body must be JSON sent with 'content-type: application/json' (this "
                                     f"request says {kind or 'nothing'!r})")
        params = dict(p.partition("=")[::2] for p in request.headers["content-type"].lower().replace(" ", "")
                      .split(";")[1:])
        charset = params.get("charset", "utf-8").strip('"')
        if charset not in ("utf-8", "utf8"):  # JSON is UTF-8 (RFC 8259); reading it as UTF-8 anyway misreads it
            raise HTTPException(415, f"JSON is read as UTF-8, but this request says charset={charset}; send the "
                                     "body as UTF-8 (charset=utf-8, or no charset)")

    @app.get("/health")
    async def health() -> dict:
        """Liveness and what is being served: the model, the run, the labels, the template, batching counters."""
        return {"status": "ok", "model": config.model.base, "run": run_dir.name, "labels": classes,
                "template": template.name, "decision": decision, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "max_applicants": max_applicants, "auth": bool(token), **grader.stats}

    example = example_applicant(spec)
    examples = {"one applicant": {"value": example}, "a list": {"value": [example, example | {spec.id.name: "EX_2"}]}}
    Applicants_ = Annotated[Applicant | conlist(Applicant, min_length=1, max_length=max_applicants),
                            Body(media_type="application/json", openapi_examples=examples)]

    @app.post("/v1/grade", dependencies=[Depends(require_token)] * bool(token) + [Depends(require_json)],
              response_model=GradeResult | list[GradeResult],
              responses={401: {"description": "Missing or wrong bearer token"}, 413: {"description": "Body too large"},
                         415: {"description": "Body not sent as JSON"}, 422: {"description": "Validation error: "
                         "`detail` lists {loc, msg, type} naming the applicant and field"}})
    async def grade(body: Applicants_, explain: Annotated[bool, Query(
            description="add each applicant's top reasons: the fields whose neutral value (the training median or "
                        "most frequent value) would lower the grade's probability most, computed in one batched "
                        "pass over the applicant's variants")] = False,
                    top: Annotated[int, Query(ge=1, le=20, description="reasons per applicant with explain")] = 3):
        """Grade one applicant (a JSON object) or a list of up to 1,024 (a JSON array): one result each, in order."""
        items = body if isinstance(body, list) else [body]
        ids = [None if a.row_id is None else str(a.row_id).strip() for a in items]
        rows = [{col.alias: as_text(getattr(a, f"c{k}")) for k, col in enumerate(spec.columns)}
                | {spec.id.alias: f"\x00{i}" if x is None else x} for i, (a, x) in enumerate(zip(items, ids))]
        applicants = Applicants(not isinstance(body, list), rows, ids, explain=top if explain else 0)
        table, proba, reasons = await batcher.submit(applicants)  # cleaned, scored with others pending (or a 422)
        results = answer(applicants, table, proba, reasons)
        return results[0] if applicants.single else results

    return app
