"""The scoring service for a run: `korllama serve RUN` (FastAPI + uvicorn); docs/serving.md tells how to use it.

`POST /v1/grade` takes `Applicant | list[Applicant]` as JSON, the Applicant model built from the run's spec, so
FastAPI and pydantic check the shape; the values are then validated and cleaned by `korllama.data.clean`, as
`korllama predict` does for a file, and scored in micro-batches (serve/batching.py). One RequestValidationError
handler turns pydantic's errors into sentences naming the applicant, the field and what is allowed (422); a body over
the size limit is a 413 (middleware), one not sent as JSON a 415, a missing or wrong bearer token (when `$token_env`
is set) a 401, before anything else is said about the body. A 5xx is a bug. `GET /health` says what is served;
`/docs` and `/redoc` load their scripts from this service (fastapi-offline), not from a CDN, and render the schema's
prose as plain text. `/` is a page for analysts (serve/page.py). The types come from serve/schema.py, the refusals
from serve/errors.py, the Host allow-list and the security headers from serve/guard.py.
"""

import asyncio
import hmac
import os
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import conlist
from starlette.exceptions import HTTPException as StarletteHTTPException

from korllama import __version__
from korllama.data import Table
from korllama.defaults import MAX_APPLICANTS, MAX_BATCH, MAX_WAIT_MS
from korllama.errors import KorllamaError
from korllama.explain import explain_rows
from korllama.scoring import predict_labels
from korllama.serve import page
from korllama.serve.batching import Applicants, Batcher, Grader, as_text
from korllama.serve.errors import (
    CHECK_OFF_LOOP,
    MAX_BODY_BYTES,
    BodyLimit,
    Phrasing,
    SafeJSONResponse,
    StrictJSONRoute,
)
from korllama.serve.guard import LOOPBACK, HostAllowList, SecurityHeaders
from korllama.serve.jobs import Limits
from korllama.serve.schema import applicant_model, example_applicant, plain_prose, result_model
from korllama.system import System


def create_app(run: System, token_env: str = "KORLLAMA_TOKEN", max_batch: int = MAX_BATCH,
               max_wait_ms: float = MAX_WAIT_MS, max_body_bytes: int = MAX_BODY_BYTES,
               max_applicants: int = MAX_APPLICANTS, decision: str = "argmax", allowed_hosts: Iterable[str] = LOOPBACK,
               limits: Limits | None = None) -> FastAPI:
    """The scoring service for a system — a run, or the trees of `korllama baseline` (korllama.system) — its model
    loaded here, once. `decision`: the grade is the most probable
    label (argmax) or the run's macro-F1 decision rule's (korllama.decision). `allowed_hosts`: the names it answers
    to (any port; "*" for all); `limits`: the page's file jobs'."""
    if max_batch < 1 or max_wait_ms < 0 or max_body_bytes < 1 or max_applicants < 1:
        raise KorllamaError("max_batch, max_body_bytes and max_applicants must be at least 1 and max_wait_ms at "
                            "least 0.")
    run_dir = run.root
    served_state = _run_state(run)  # what the loaded weights were: a retrained run is noticed, not hidden
    rule = run.rule(decision)
    _ = run.model  # loaded (and its checksums checked) before the service answers: safetensors or LightGBM text only
    spec, classes = run.spec, run.classes
    template = run.template.name if run.template is not None else ""
    model_name = run.config.model.base if run.template is not None else "trees (LightGBM)"
    token = os.environ.get(token_env) or None
    Applicant, GradeResult = applicant_model(spec), result_model(spec)
    phrasing = Phrasing(spec, max_applicants, Applicant)

    def answer(applicants: Applicants, table: Table, proba: np.ndarray, reasons) -> list[dict]:
        """One result per applicant, in order (fields declared in `result_model`)."""
        grades = rule.apply(proba) if rule is not None else predict_labels(proba, classes)
        return [{"id": applicants.ids[i], "grade": grade, "template": template, "decision": decision,
                 "probabilities": {c: float(x) for c, x in zip(classes, p)}}
                | ({"reasons": reasons[i]} if reasons is not None else {})
                for i, (p, grade) in enumerate(zip(proba, grades))]

    references: dict = {}  # the run's neutral values for reasons, read on the first request that asks

    def explainer(table: Table, top: int):
        if not references:
            references.update(run.references)
        return explain_rows(run, table, references, top, max_batch)

    grader = Grader(run, max_batch, explainer)
    batcher = Batcher(grader, max_applicants, max_wait_ms / 1000)  # a call: many requests; a pass: max_batch

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        sweeper = asyncio.create_task(jobs.sweeper())  # graded files an hour old are deleted
        try:
            yield
        finally:  # on Ctrl-C and SIGTERM alike: uvicorn runs this, then re-raises the signal
            sweeper.cancel()
            await batcher.aclose()
            await asyncio.to_thread(jobs.close)  # uploads and graded files go with the service

    app = FastAPIOffline(  # its /static-offline-docs: Swagger UI's and ReDoc's scripts, not from a CDN
        title="korllama", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description=f"Grades applicants with the tuned run {run_dir.name} (rank scoring over {spec.label.alias} "
                    f"{', '.join(classes)}). Keys: the table's headers or English aliases; values raw as in the CSV "
                    "or clean.")
    app.router.route_class = StrictJSONRoute
    app.add_middleware(BodyLimit, limit=max_body_bytes, exempt=frozenset({page.UPLOAD}))
    app.add_middleware(HostAllowList, hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)  # the outermost: a refused host's answer has the headers too
    app.state.batcher, app.state.stats, app.state.run_dir = batcher, grader.stats, run_dir
    build_schema = app.openapi

    def openapi() -> dict:  # the docs render descriptions as Markdown: the spec's words must stay words
        if app.openapi_schema is None:
            app.openapi_schema = plain_prose(build_schema())
        return app.openapi_schema
    app.openapi = openapi

    for path, name in (("/docs", "docs.html"), ("/redoc", "redoc.html")):  # their scripts in files: no inline one
        app.add_api_route(path, static_html(page.WEB / name), methods=["GET"], include_in_schema=False)

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

    async def screened(request: Request):
        """The first unknown key is a 422 at once, before pydantic lists each of them; a long list's applicants are
        validated on a thread (errors.Phrasing.screen, check_each): the event loop goes on answering meanwhile."""
        body = await request.json()
        problems = phrasing.screen(body)
        if problems is None and isinstance(body, list) and CHECK_OFF_LOOP < len(body) <= max_applicants:
            problems = await asyncio.to_thread(phrasing.check_each, body)
        if problems is not None:
            raise HTTPException(422, problems)

    @app.get("/health")
    async def health() -> dict:
        """Liveness and what is being served: the model, the run, the labels, the template, batching counters; and
        whether the run on disk was trained again since it was loaded (`stale`: restart the service to serve it)."""
        stale = _run_state(run) != served_state
        notice = {"stale": stale} | ({"notice": f"{run_dir.name} was trained again since this service loaded it; "
                                                "it still serves the weights it loaded: restart it to serve the new "
                                                "ones."} if stale else {})
        return {"status": "ok", "model": model_name, "run": run_dir.name, **notice, "labels": classes,
                "template": template, "decision": decision, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "max_applicants": max_applicants, "auth": bool(token), **grader.stats}

    example = example_applicant(spec)
    examples = {"one applicant": {"value": example}, "a list": {"value": [example, example | {spec.id.name: "EX_2"}]}}
    Applicants_ = Annotated[Applicant | conlist(Applicant, min_length=1, max_length=max_applicants),
                            Body(media_type="application/json", openapi_examples=examples)]

    @app.post("/v1/grade", dependencies=[Depends(require_token)] * bool(token) + [Depends(require_json),
                                                                                  Depends(screened)],
              response_model=GradeResult | list[GradeResult],
              responses={401: {"description": "Missing or wrong bearer token"}, 413: {"description": "Body too large"},
                         415: {"description": "Body not sent as JSON"}, 422: {"description": "Validation error: "
                         "`detail` lists {loc, msg, type} naming the applicant and field"}})
    async def grade(body: Applicants_, explain: Annotated[bool, Query(
            description="add each applicant's top reasons: the fields whose neutral value (the training median or "
                        "most frequent value) would lower the grade's probability most, computed in one batched "
                        "pass over the applicant's variants")] = False,
                    top: Annotated[int, Query(ge=1, le=20, description="reasons per applicant with explain")] = 3):
        """Grade one applicant (a JSON object) or a list of them (a JSON array, up to the service's limit): one result
        each, in order."""
        items = body if isinstance(body, list) else [body]
        ids = [None if a.row_id is None else str(a.row_id).strip() for a in items]
        rows = [{col.alias: as_text(getattr(a, f"c{k}")) for k, col in enumerate(spec.columns)}
                | {spec.id.alias: f"\x00{i}" if x is None else x} for i, (a, x) in enumerate(zip(items, ids))]
        applicants = Applicants(not isinstance(body, list), rows, ids, explain=top if explain else 0)
        table, proba, reasons = await batcher.submit(applicants)  # cleaned, scored with others pending (or a 422)
        results = answer(applicants, table, proba, reasons)
        return results[0] if applicants.single else results

    jobs = app.state.jobs = page.add_page(app, run, decision, [Depends(require_token)] * bool(token), max_batch,
                                          limits=limits)
    return app


def static_html(path) -> Callable:
    html = path.read_text("utf-8")

    async def serve() -> HTMLResponse:
        return HTMLResponse(html)
    return serve


def _run_state(run) -> str | None:
    """The run's record of its weights (weights.json, rewritten by every training): changed means retrained."""
    record = run.dir.weights_record if run.dir is not None else None
    try:
        return record.read_text("utf-8") if record is not None else None
    except OSError:
        return "gone"
