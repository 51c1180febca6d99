"""An HTTP scoring service for a tuned run: `korllama serve RUN` (FastAPI + uvicorn).

- `GET /health`: the model, the run, the label set, the template and the batching counters.
- `POST /v1/grade`: one applicant (a JSON object) or a list of up to 1,024. Keys are the table's Korean headers
  or its English aliases (plus an optional `ID`/`id`); values raw as in the CSV (' 36 months', '10+ years',
  '부채 통합') or clean (36, 10, "debt consolidation"). The answer per applicant: id, grade, P(grade) for every
  label and the prompt template's name; one object in, one result out; a list in, a list out.
- OpenAPI at `/openapi.json`, interactive docs at `/docs`.

Validation is the CSV loader's: pydantic checks the shape (every field present, a number or a string, no unknown
keys), then the applicants become a one-row-per-applicant frame of strings that `korllama.data.clean` validates
and cleans with the run's spec, exactly as `korllama predict` does for a file. Every problem is a 422 whose
`detail` names the applicant, the field and what is allowed; a body over the size limit is a 413. A 5xx is a bug.

Requests arriving together are scored together: each request's applicants are queued, and one worker task
collects what is pending for up to `max_wait_ms` (or `max_batch` applicants), cleans them (in one `clean` call
when they are all valid: its cost is per call, not per row), renders the prompts and runs one `score()` call, on
a thread, so the event loop keeps accepting requests meanwhile. A bad value fails its own request only.

Security defaults: the CLI binds 127.0.0.1; when the environment variable named by `token_env` is set, every
endpoint but /health and the docs needs `Authorization: Bearer <token>`; weights are read from safetensors only;
remote code runs only when the run's config says `model.trust_remote_code: true`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    create_model,
)
from starlette.requests import ClientDisconnect

from korllama import __version__
from korllama.data import Table, clean
from korllama.errors import DataError, KorllamaError
from korllama.schema import ColumnSpec, TableSpec

MAX_APPLICANTS = 1024
MAX_BODY_BYTES = 4 * 1024 * 1024  # 1,024 applicants with Korean keys and raw values are about 0.7 MiB
MAX_TEXT = 200  # characters in one value: no real cell is longer, and error messages quote the value
MAX_ERRORS = 20  # problems listed in one 422 answer

Text = Annotated[str, StringConstraints(strict=True, max_length=MAX_TEXT)]


class GradeResult(BaseModel):
    """The grade of one applicant."""

    id: str | None = Field(description="the applicant's ID/id as sent, or null")
    grade: str = Field(description="the most probable label")
    probabilities: dict[str, float] = Field(description="P(label) for every label (rank scoring; they sum to 1)")
    template: str = Field(description="the prompt template the run was trained with")


class Rejected(Exception):
    """A request the service refuses: an HTTP status and a `detail` (a sentence, or a list of located errors)."""

    def __init__(self, status: int, detail: str | list[dict], headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _problem(loc: list, msg: str, kind: str, value: Any = None) -> dict:
    item = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if value is not None:
        item["input"] = value
    return item


def _show(value: Any) -> str:
    """A value as JSON, cut short (messages quote what was sent)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# --- validation: pydantic for the shape, korllama.data.clean for the values --------------------------------------

@dataclass
class Applicants:
    """One request's applicants after the shape check: raw strings keyed by alias, the ids as sent."""

    single: bool  # the body was one applicant: errors say "applicant", not "applicants[i]"
    rows: list[dict[str, str]] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return "applicant" if self.single else f"applicants[{i}]"

    def loc(self, i: int, *rest) -> list:
        return list(rest) if self.single else [i, *rest]


class ApplicantValidator:
    """`shape`: a request's JSON applicants -> raw rows (pydantic; Rejected with a 422 if malformed).
    `clean`: the raw rows of several requests -> a clean Table each, or a Rejected (korllama.data.clean)."""

    def __init__(self, spec: TableSpec, max_applicants: int = MAX_APPLICANTS):
        self.spec, self.max_applicants = spec, max_applicants
        self.by_key: dict[str, ColumnSpec | None] = {}  # every accepted key -> its column (None: the id)
        fields: dict[str, Any] = {}
        for i, col in enumerate(spec.columns):
            kind: Any = Text if col.parser == "category" else StrictInt | StrictFloat | Text
            if col.nullable:
                kind = kind | None
            fields[f"c{i}"] = (kind, Field(None if col.nullable else ..., validation_alias=self._aliases(col),
                                           description=self._describe(col)))
            self.by_key.update({col.alias: col, col.name: col})
        fields["row_id"] = (StrictInt | Text | None, Field(None, validation_alias=self._aliases(spec.id),
                                                           description="optional: echoed back in the result"))
        self.by_key.update({spec.id.alias: None, spec.id.name: None})
        self.model = create_model("Applicant", __config__=ConfigDict(extra="forbid"), **fields)

    @staticmethod
    def _aliases(col) -> AliasChoices:
        return AliasChoices(*dict.fromkeys([col.alias, col.name]))

    @staticmethod
    def _describe(col: ColumnSpec) -> str:
        other = f" (or the header {col.name!r})" if col.name != col.alias else ""
        optional = "; may be null or left out" if col.nullable else ""
        return f"{col.text or col.alias}{other}. Allowed: {col.allowed}{optional}."

    def _name(self, col: ColumnSpec | None) -> str:
        if col is None:
            return self.spec.id.alias
        return col.alias if col.name == col.alias else f"{col.alias} ({col.name})"

    # -- the shape --
    def items(self, payload: Any) -> tuple[list, bool]:
        """(applicants, single): a JSON object is one applicant, a JSON list holds several."""
        if isinstance(payload, dict):
            return [payload], True
        if not isinstance(payload, list):
            raise Rejected(422, [_problem([], f"the body is a JSON {_json_type(payload)}; send one applicant "
                                              "(a JSON object) or a list of them", "body_type")])
        if not payload:
            raise Rejected(422, [_problem([], "the list of applicants is empty", "too_short")])
        if len(payload) > self.max_applicants:
            raise Rejected(422, [_problem([], f"{len(payload):,} applicants in one request; at most "
                                              f"{self.max_applicants:,} are allowed (split them over several "
                                              "requests)", "too_long")])
        return payload, False

    def shape(self, payload: Any) -> Applicants:
        """Check a parsed JSON body's shape with pydantic: the applicants as rows of raw strings (keyed by alias)."""
        items, single = self.items(payload)
        request = Applicants(single=single)
        problems = []
        for i, item in enumerate(items):
            try:
                applicant = self.model.model_validate(item)
            except ValidationError as exc:
                problems.extend(self._explain(exc, request.where(i), lambda *rest, i=i: request.loc(i, *rest)))
                continue
            values = applicant.__dict__
            request.rows.append({col.alias: _as_text(values[f"c{k}"]) for k, col in enumerate(self.spec.columns)})
            request.ids.append(None if values["row_id"] is None else str(values["row_id"]).strip())
        if problems:
            raise Rejected(422, _cap(problems))
        first: dict[str, int] = {}
        for i, x in enumerate(request.ids):  # as in a file, IDs are unique (across requests they need not be)
            if x is not None and first.setdefault(x, i) != i:
                raise Rejected(422, [_problem(request.loc(i, self.spec.id.alias), f"{request.where(i)}, column "
                                              f"{self.spec.id.alias}: duplicate ID {x!r} (also "
                                              f"{request.where(first[x])}); IDs must be unique.", "value_error")])
        return request

    def clean(self, requests: list[Applicants]) -> list[Table | Rejected]:
        """Validate and clean the applicants of several requests with `korllama.data.clean`, all in one call when
        they are all valid. A bad value is blamed on its request, which is judged alone (so its message counts
        only its own rows) and left out; the others are cleaned together again."""
        out: list[Table | Rejected | None] = [None] * len(requests)
        alive = list(range(len(requests)))
        while alive:
            starts = np.cumsum([0, *(len(requests[j]) for j in alive)])

            def where(row: int, starts=starts, alive=tuple(alive)) -> str:  # "applicants[i]" of its own request
                k = int(np.searchsorted(starts, row, side="right")) - 1
                return requests[alive[k]].where(row - int(starts[k]))

            frame = pd.DataFrame([r for j in alive for r in requests[j].rows], dtype=object)
            try:
                table = clean(frame, self.spec, source="request", row_label=where)
            except DataError as exc:
                if exc.row is None:  # not one applicant's fault: judge each request alone
                    for j in alive:
                        out[j] = self._clean_one(requests[j])
                    return out
                k = int(np.searchsorted(starts, exc.row, side="right")) - 1
                j = alive.pop(k)
                # alone, its error is already the one to report; among others, judge it alone for its own message
                out[j] = self._rejected(requests[j], exc) if not alive else self._clean_one(requests[j])
                continue
            for k, j in enumerate(alive):
                out[j] = table if len(alive) == 1 else table.subset(np.arange(starts[k], starts[k + 1]))
            break
        return out

    def _clean_one(self, request: Applicants) -> Table | Rejected:
        try:
            return clean(pd.DataFrame(request.rows, dtype=object), self.spec, source="request",
                         row_label=request.where)
        except DataError as exc:
            return self._rejected(request, exc)

    @staticmethod
    def _rejected(request: Applicants, exc: DataError) -> Rejected:
        at = request.loc(exc.row, exc.column) if exc.row is not None and exc.column else []
        return Rejected(422, [_problem(at, str(exc), "value_error")])

    def _explain(self, exc: ValidationError, where: str, loc) -> list[dict]:
        """pydantic's errors for one applicant as one sentence per field, naming what is allowed."""
        out, seen = [], set()
        for err in exc.errors():
            key = err["loc"][0] if err["loc"] else None
            if key in seen:
                continue  # a union reports each of its branches: one sentence per field is enough
            seen.add(key)
            kind = err["type"]
            if key is None:
                out.append(_problem(loc(), f"{where} is a JSON {_json_type(err['input'])}; expected an object "
                                           "whose keys are the table's fields", "model_type"))
                continue
            col = self.by_key.get(key, False)
            if kind == "missing":
                out.append(_problem(loc(key), f"{where}: the field {self._name(col)} is missing; expected "
                                              f"{col.allowed if col else 'a value'}", "missing"))
            elif kind == "extra_forbidden" and col is not False:
                out.append(_problem(loc(key), f"{where}: {self._name(col)} is given twice (once by its header, "
                                              "once by its English name); send it once", "extra_forbidden"))
            elif kind == "extra_forbidden":
                known = ", ".join(c.alias for c in self.spec.columns)
                out.append(_problem(loc(key), f"{where}: unknown field {key!r}; the fields are {known} (or their "
                                              f"Korean headers) and {self.spec.id.alias}", "extra_forbidden"))
            elif any(e["loc"][:1] == (key,) and e["type"] == "string_too_long" for e in exc.errors()):
                out.append(_problem(loc(key), f"{where}, column {key}: the value is longer than {MAX_TEXT} "
                                              "characters", "string_too_long"))
            else:
                allowed = col.allowed if col else "a string or a whole number"
                out.append(_problem(loc(key), f"{where}, column {key}: {_show(err['input'])} is not allowed; "
                                              f"expected {allowed}", "type_error", err["input"]))
        return out


def _as_text(value: Any) -> str:
    """A JSON value as the CSV would hold it: 36 -> '36', 36.0 -> '36', 0.25 -> '0.25', null -> ''."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def _cap(problems: list[dict]) -> list[dict]:
    if len(problems) <= MAX_ERRORS:
        return problems
    more = len(problems) - MAX_ERRORS
    return [*problems[:MAX_ERRORS], _problem([], f"... and {more} more problems like these", "too_many_errors")]


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise Rejected(422, [_problem([], "the body is empty; send one applicant (a JSON object) or a list of them",
                                      "json_invalid")])

    def refuse(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(body, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise Rejected(422, [_problem([], f"the body is not valid JSON ({reason}); send one applicant (a JSON "
                                          "object) or a list of them", "json_invalid")]) from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed `limit` bytes (declared or actual)."""
    too_big = f"the body is larger than {limit:,} bytes; send fewer applicants per request"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Rejected(400, f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > limit:
            raise Rejected(413, too_big)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Rejected(413, too_big)
            chunks.append(chunk)
    except ClientDisconnect:
        raise Rejected(400, "the client disconnected before the body was read") from None
    return b"".join(chunks)


# --- micro-batching -------------------------------------------------------------------------------------------

@dataclass
class Job:
    applicants: Applicants
    future: asyncio.Future

    def __len__(self) -> int:
        return len(self.applicants)


class Batcher:
    """A queue and one worker task: whatever is pending (up to `max_batch` applicants, waiting at most
    `max_wait_s` for more) is cleaned, rendered and scored together on a thread (`score_rows(jobs, stats)`, one
    `score()` call), while the event loop goes on reading requests.

    The worker starts with the first request in the running event loop (so it works under uvicorn, TestClient
    and httpx's ASGITransport alike) and is restarted if that loop changed.
    """

    def __init__(self, score_rows, max_batch: int, max_wait_s: float):
        self.score_rows, self.max_batch, self.max_wait_s = score_rows, max_batch, max_wait_s
        self.stats = {"requests": 0, "applicants": 0, "batches": 0, "forward_passes": 0, "largest_batch": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._carry: Job | None = None

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._queue, self._carry = loop, asyncio.Queue(), None
            self._task = loop.create_task(self._run(), name="korllama-batcher")

    async def submit(self, applicants: Applicants) -> np.ndarray:
        """P(label) for every applicant, scored together with whatever else is pending (or Rejected)."""
        self._ensure_worker()
        job = Job(applicants, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _collect(self) -> list[Job]:
        first = self._carry or await self._queue.get()
        self._carry = None
        jobs, size = [first], len(first)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if size + len(job) > self.max_batch:
                self._carry = job  # first of the next batch
                break
            jobs.append(job)
            size += len(job)
        return [j for j in jobs if not j.future.done()]  # a client that went away is not scored

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            try:
                results = await asyncio.to_thread(self.score_rows, jobs, self.stats)  # on a thread
            except Exception as exc:  # a bug: every waiting request gets a 500, the worker lives on
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)


# --- the app -----------------------------------------------------------------------------------------------------

def create_app(run_dir: str | Path, token_env: str = "KORLLAMA_TOKEN", max_batch: int = 64, max_wait_ms: float = 10,
               max_body_bytes: int = MAX_BODY_BYTES, max_applicants: int = MAX_APPLICANTS) -> FastAPI:
    """The scoring service for a run directory (the model is loaded here, once)."""
    from korllama.predict import load_run
    from korllama.prompts import get_template
    from korllama.schema import load_spec
    from korllama.scoring import encode_prompts, predict_labels, score

    if max_batch < 1 or max_wait_ms < 0 or max_body_bytes < 1 or max_applicants < 1:
        raise KorllamaError("max_batch, max_body_bytes and max_applicants must be at least 1 and max_wait_ms at "
                            "least 0.")
    run_dir = Path(run_dir)
    model, tokenizer, config = load_run(run_dir)  # safetensors only, for every command
    spec = load_spec(config.data.spec)
    template = get_template(spec, config.prompt.template, config.prompt.fields)
    classes = list(spec.label.classes)
    validator = ApplicantValidator(spec, max_applicants)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    max_tokens = min(config.train.max_length, positions or config.train.max_length)
    token = os.environ.get(token_env) or None

    def score_rows(jobs: list[Job], stats: dict) -> list:
        """Runs on the worker's thread (the only one that touches the tokenizer and the model): clean every job's
        applicants (together), render the prompts, refuse over-long ones, score the rest in one call."""
        results: list = validator.clean([job.applicants for job in jobs])
        encoded: dict[int, list[list[int]]] = {}  # tokenised once: for the length check and for scoring
        for j, (job, table) in enumerate(zip(jobs, results)):
            if isinstance(table, Rejected):
                continue
            encoded[j] = encode_prompts(tokenizer, template.render(table))
            long = [i for i, ids in enumerate(encoded[j]) if len(ids) > max_tokens]
            if long:
                i, request = long[0], job.applicants
                results[j] = Rejected(422, [_problem(request.loc(i), f"{request.where(i)}: its prompt is "
                                                     f"{len(encoded[j][i]):,} tokens, more than this run's limit of "
                                                     f"{max_tokens:,} (are the numbers real?)", "prompt_too_long")])
                del encoded[j]
        if encoded:
            rows = [ids for j in encoded for ids in encoded[j]]
            proba = score(model, tokenizer, None, classes, batch_size=max_batch, encoded=rows)
            start = 0
            for j in encoded:
                results[j] = proba[start:start + len(encoded[j])]
                start += len(encoded[j])
            stats["requests"] += len(encoded)
            stats["applicants"] += len(rows)
            stats["batches"] += 1
            stats["forward_passes"] += -(-len(rows) // max_batch)  # score() runs ceil(rows / batch) passes
            stats["largest_batch"] = max(stats["largest_batch"], len(rows))
        return results

    batcher = Batcher(score_rows, max_batch, max_wait_ms / 1000)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await batcher.aclose()

    app = FastAPI(
        title="korllama", version=__version__, lifespan=lifespan,
        description=f"Grades applicants with the tuned run `{run_dir.name}` (rank scoring over "
                    f"{', '.join(classes)}). Keys: the table's Korean headers or English aliases; values raw as "
                    "in the CSV or clean.")
    app.state.batcher, app.state.stats, app.state.run_dir = batcher, batcher.stats, run_dir

    @app.exception_handler(Rejected)
    async def _rejected(_request: Request, exc: Rejected):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    bearer = HTTPBearer(auto_error=False, description=f"the token in the server's ${token_env}")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, token.encode()):
            raise HTTPException(401, f"a valid bearer token is required: send 'Authorization: Bearer <token>' "
                                     f"(the token is the server's ${token_env})",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(require_token)] if token else []

    @app.get("/health")
    async def health() -> dict:
        """Liveness and what is being served: the model, the run, the labels, the template, batching counters."""
        return {"status": "ok", "model": config.model.base, "run": run_dir.name, "labels": classes,
                "template": template.name, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "max_applicants": max_applicants, "auth": bool(token), **batcher.stats}

    example = {"ID": "TEST_00000", "대출금액": "16800000", "대출기간": " 36 months", "근로기간": "8 years",
               "주택소유상태": "MORTGAGE", "연간소득": "132000000", "부채_대비_소득_비율": "19.64",
               "총계좌수": "12", "대출목적": "부채 통합", "최근_2년간_연체_횟수": "0", "총상환원금": "394692",
               "총상환이자": "146604.0", "총연체금액": "0.0", "연체계좌수": "0.0"}
    body_schema = {"anyOf": [{"$ref": "#/components/schemas/Applicant"},
                             {"type": "array", "items": {"$ref": "#/components/schemas/Applicant"},
                              "minItems": 1, "maxItems": max_applicants}]}
    problems = {"description": "Validation error: `detail` lists {loc, msg, type} naming the applicant and field"}

    @app.post(
        "/v1/grade", dependencies=guarded, response_model=GradeResult | list[GradeResult],
        responses={401: {"description": "Missing or wrong bearer token"}, 413: {"description": "Body too large"},
                   422: problems},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": body_schema, "example": example}}}})
    async def grade(request: Request):
        """Grade one applicant (a JSON object) or a list of up to 1,024 (a JSON array): one result each, in order."""
        payload = _parse_json(await _read_body(request, max_body_bytes))
        if isinstance(payload, list) and len(payload) > 64:  # a long list is checked off the event loop
            applicants = await asyncio.to_thread(validator.shape, payload)
        else:
            applicants = validator.shape(payload)
        proba = await batcher.submit(applicants)  # cleaned with the spec and scored with other pending requests
        results = [{"id": applicants.ids[i], "grade": grade,
                    "probabilities": {c: float(x) for c, x in zip(classes, p)}, "template": template.name}
                   for i, (p, grade) in enumerate(zip(proba, predict_labels(proba, classes)))]
        return results[0] if applicants.single else results

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["Applicant"] = \
                validator.model.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
