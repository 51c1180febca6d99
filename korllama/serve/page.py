"""The analysts' page of `korllama serve`: `add_page(app, ...)` registers it on the service (see docs/serving-page.md).

The page is plain HTML, CSS and JavaScript shipped in the package (serve/web/): no CDN, no build step, so it works
on a machine without internet. It grades one applicant through the service's own `POST /v1/grade?explain=true` (so
a bad value gets the service's 422 sentence, shown at its field) and a whole file through `predict_file`, the
chunked path `korllama predict` uses, run as a polled job on one worker thread with the model the service already
holds. Its routes are left out of the OpenAPI schema: the API is /v1/grade.

    GET  /                       the page, with its form's description from the run's spec in it (public, as
                                 /docs is): columns, labels, limits, whether a token is needed
    GET  /page/static/{file}     its CSS and JavaScript
    GET  /page/run               the run: base and provenance, data and split, metrics, decision, card as HTML,
                                 example rows (token)
    POST /page/jobs?name=&proba= a table file as the raw body -> {"id": ...}; over the limit a 413, past the jobs'
                                 caps a 429 (token)
    GET  /page/jobs/{id}         its state: queued, checking, grading (done of total rows), done or failed (token)
    GET  /page/jobs/{id}/file    the graded CSV, as `korllama predict` writes it, formulas neutralised (token)
    DELETE /page/jobs/{id}       cancel the job, or delete its graded file now (token)

The jobs, their files and their limits: serve/jobs.py.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pandas as pd
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from markdown_it import MarkdownIt

from korllama.errors import KorllamaError
from korllama.evaluation import read_evaluation
from korllama.serve.jobs import Jobs, Limits, size_text
from korllama.serve.schema import example_applicant
from korllama.system import System

WEB = Path(__file__).with_name("web")
UPLOAD = "/page/jobs"
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a 100,000-row loan CSV is about 12 MB
EXAMPLE_ROWS = 10


def add_page(app: FastAPI, run: System, decision: str, auth: list, batch_size: int,
             max_upload_bytes: int | None = None, limits: Limits | None = None) -> Jobs:
    """Register the page's routes on the service. `run`: the Run it serves (its model already loaded); `auth`: the
    dependencies that check the bearer token (empty without one), put on every route that shows the run or grades.
    Returns the file jobs: the service's lifespan sweeps them (`Jobs.sweeper`) and deletes them (`Jobs.close`)."""
    spec = run.spec
    jobs = Jobs(run, decision, batch_size, limits or Limits())
    max_upload_bytes = max_upload_bytes or MAX_UPLOAD_BYTES
    form = json.dumps(form_info(spec, decision, bool(auth), max_upload_bytes), ensure_ascii=False)
    html = (WEB / "index.html").read_text("utf-8").replace("{}<!-- form -->", form.replace("<", "\\u003c"), 1)
    run_info: dict = {}  # built on the first request: the card rendered, the example rows read

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html)

    app.mount("/page/static", StaticFiles(directory=WEB), name="page-static")

    @app.get("/page/run", include_in_schema=False, dependencies=auth)
    def page_run() -> dict:  # a plain def: FastAPI runs it on a thread (reading the card and the example rows)
        if not run_info:
            run_info.update(describe_run(run, decision))
        return run_info

    @app.post(UPLOAD, include_in_schema=False, dependencies=auth)
    async def upload(request: Request, name: str = Query("upload.csv", max_length=300), proba: bool = True) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/octet-stream":  # as /v1/grade wants JSON: no other site's form can post here
            raise HTTPException(415, "send the file as the body with 'content-type: application/octet-stream' (this "
                                     f"request says {kind or 'nothing'!r})")
        declared = request.headers.get("content-length", "")
        too_big = HTTPException(413, f"the file is larger than {size_text(max_upload_bytes)}, the most this page "
                                     "grades; use `korllama predict RUN --data FILE` for a larger file")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            raise too_big
        job = jobs.new(name, proba, int(declared) if declared.isdigit() else 0)
        try:
            with job.path.open("wb") as fh:
                async for chunk in request.stream():
                    if job.bytes + len(chunk) > max_upload_bytes:
                        raise too_big
                    jobs.grow(job, len(chunk))
                    fh.write(chunk)
        except BaseException:  # too big, over the disk cap, the client gone: nothing of it is kept
            jobs.forget(job)
            raise
        jobs.start(job)
        return {"id": job.id}

    @app.get(UPLOAD + "/{job_id}", include_in_schema=False, dependencies=auth)
    async def job_state(job_id: str) -> dict:
        return jobs.get(job_id).state()

    @app.get(UPLOAD + "/{job_id}/file", include_in_schema=False, dependencies=auth)
    async def job_file(job_id: str) -> FileResponse:
        job = jobs.get(job_id)
        if job.status != "done":
            raise HTTPException(409, f"the file {job.name} is not graded yet ({job.status})")
        return FileResponse(job.out, media_type="text/csv; charset=utf-8", filename=f"{job.path.stem}-graded.csv")

    @app.delete(UPLOAD + "/{job_id}", include_in_schema=False, dependencies=auth)
    async def job_cancel(job_id: str) -> dict:
        return jobs.cancel(jobs.get(job_id))

    return jobs


# --- the form ------------------------------------------------------------------------------------------------------

def form_info(spec, decision: str, auth: bool, max_upload_bytes: int) -> dict:
    """What the page builds its form from (JSON in the page itself): one entry per column, in the spec's order."""
    return {"spec": spec.name, "description": spec.description, "id": {"name": spec.id.name, "alias": spec.id.alias},
            "label": {"name": spec.label.name, "alias": spec.label.alias, "classes": list(spec.label.classes)},
            "columns": [column_info(col) for col in spec.columns], "derived": derived_info(spec),
            "decision": decision, "auth": auth, "max_upload_bytes": max_upload_bytes}


def derived_info(spec) -> dict:
    """Each derived feature (a reason may name one; the form has no field for it) by its alias: its description and
    the table's headers it is computed from, through the derived features it uses (payments_made: 대출금액, 대출기간,
    총상환원금, 총상환이자), in the order its arguments name them."""
    sources = {col.alias: [col.name] for col in spec.columns}
    out = {}
    for feature in spec.derived:
        headers = list(dict.fromkeys(h for arg in feature.args for h in sources[arg]))
        sources[feature.alias] = headers
        out[feature.alias] = {"text": feature.text, "from": headers}
    return out


def column_info(col) -> dict:
    """A column as a form field: a select for a category or a column of allowed numbers, else a number input with
    the spec's bounds. `hint`: the English alias, the spec's description when it is not the header, the bounds."""
    bounds = [f"≥ {col.min:g}" if col.min is not None else "", f"≤ {col.max:g}" if col.max is not None else ""]
    hint = " · ".join(x for x in [col.alias, col.text if col.text not in ("", col.name) else "", *bounds] if x)
    out = {"name": col.name, "alias": col.alias, "hint": hint, "required": not col.nullable, "allowed": col.allowed}
    if col.parser == "category":
        pairs = col.values.items() if isinstance(col.values, dict) else ((v, v) for v in col.values)
        options = [{"value": raw, "text": raw if raw == clean else f"{raw} ({clean})"} for raw, clean in pairs]
        return out | {"kind": "select", "options": options}
    if col.values:
        return out | {"kind": "select", "options": [{"value": str(v), "text": str(v)} for v in col.values]}
    return out | {"kind": "number", "min": col.min, "max": col.max, "step": 1 if col.integer else "any"}


# --- the run -------------------------------------------------------------------------------------------------------

def describe_run(system: System, decision: str) -> dict:
    """The run panel: what was trained on what, how well it did on validation rows, how grades are decided, the
    model card as HTML, and example rows (by header, as the form takes them). Everything comes from the system
    (korllama.run.Run or korllama.trees.Trees), which alone reads its folder. `kind`: "trees" or "llm", which facts
    the page shows. No path of the server's is in it: a folder or file is named by its name (`public_name`)."""
    summary, rule, root = system.summary, system.stored_rule, system.root
    data = system.trained_on or {}
    source = data.get("source") or ""
    shown = {"spec": system.spec.name, **{k: v for k, v in data.items() if k != "source"}}
    if system.template is None:  # the trees
        settings = ", ".join(f"{k} {v}" for k, v in (summary.get("settings") or {}).items()) or "default settings"
        rounds = "+".join(str(v) for v in (summary.get("rounds") or {}).values())
        split_ = summary.get("split") or {}
        facts = {"kind": "trees", "base": "trees (LightGBM)", "tuning": f"{settings}; {rounds} boosting rounds",
                 "template": "",
                 "data": {"source": Path(source).name, **shown},
                 "split": {"validation": split_.get("valid_fraction"), "test": split_.get("test_fraction") or None,
                           "seed": split_.get("seed"),
                           "train_rows": summary.get("fit_rows"), "validation_rows": None},
                 "metrics": {"macro_f1": _held_out_f1(root)}, "card_html": None}
    else:
        config = system.config
        lora = config.lora
        base = config.model.base
        local_base = [base, Path(base).expanduser().resolve()] if is_local(base) else []
        facts = {"kind": "llm", "base": public_name(base),  # where it lies is not the page's to say
                 "tuning": f"LoRA (r {lora.r}, alpha {lora.alpha})" if lora is not None else "all weights",
                 "template": config.prompt.template,
                 "data": {"source": Path(config.data.train).name if config.data.train else
                          f"synthetic loan table ({config.data.synth_rows:,} rows, seed {config.data.synth_seed})",
                          **shown},
                 "split": {"validation": config.data.valid_fraction, "test": config.data.test_fraction or None,
                           "seed": config.data.split_seed,
                           "train_rows": summary.get("train_rows"), "validation_rows": summary.get("eval_rows")},
                 "metrics": {"macro_f1": summary.get("best_eval_macro_f1"), "best_step": summary.get("best_step"),
                             "steps": summary.get("global_step"), "train_loss": summary.get("train_loss"),
                             "macro_f1_by_decision": summary.get("decision")},
                 "card_html": unpathed(card_html(system.dir.model_card), root, config.data.train, *local_base)
                 if system.dir.model_card.is_file() else None}
    return {
        "run": root.name, **facts,
        "provenance": {k: public_name(v) for k, v in system.provenance.items() if not isinstance(v, dict | list)},
        "decision": {"served": decision, "rule": rule and {"classes": rule.classes, "weights": rule.weights,
                                                           "fitted_rows": rule.fitted_rows,
                                                           "argmax_kept": rule.argmax_kept}},
        "examples": example_rows(system),
    }


def is_local(name) -> bool:
    """`name` (a base model, a file) is a path on this machine rather than a name (tiny, smollm2-135m, a hub id
    such as HuggingFaceTB/SmolLM2-135M): absolute, relative to here (./, ../, ~) or an existing folder or file."""
    if not isinstance(name, str | Path) or not str(name):
        return False
    text = str(name)
    return (Path(text).expanduser().is_absolute() or text.startswith(("./", "../", "~")) or text in (".", "..")
            or Path(text).exists())


def public_name(value):
    """A value as the page may show it: a path on the server as its last part ("/srv/bases/my-base" -> "my-base"),
    anything else as it is."""
    return Path(str(value)).expanduser().resolve().name if is_local(value) else value


def _held_out_f1(folder: Path) -> float | None:
    """The trees' macro-F1 on their held-out rows: the evaluation `korllama baseline` wrote beside them."""
    try:
        return read_evaluation(folder).macro_f1
    except KorllamaError:
        return None


def card_html(path: Path) -> str:
    """The model card's markdown as HTML: markdown-it (installed with rich) with raw HTML off, so nothing in the
    card can inject markup or script; its link check refuses javascript: URLs."""
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(path.read_text("utf-8"))


def unpathed(html: str, *paths) -> str:
    """The card's HTML with the run's and its data's absolute paths as their names: where they lie on the server is
    not the public page's to say."""
    for path in sorted((Path(p) for p in paths if p), key=lambda p: -len(str(p))):
        html = html.replace(escape(str(path)), escape(path.name))
    return html


def example_rows(system: System) -> list[dict]:
    """Up to EXAMPLE_ROWS rows of the system's own data (`example_rows` of the Run or the Trees), keyed by header
    with the values the form's inputs take (a category's raw value, a number as a string, "" for missing); the
    spec's example when the data cannot be read here (the system was made on another machine)."""
    spec = system.spec
    table = system.example_rows(EXAMPLE_ROWS)
    if table is None or not len(table):
        example = example_applicant(spec)
        return [{k: "" if v is None else str(v) for k, v in example.items()}]

    def raw(col, value) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if col.parser == "category":
            return next((k for k, v in col.values.items() if v == value), value) if isinstance(col.values, dict) \
                else str(value)
        return str(int(value)) if col.integer or float(value).is_integer() else repr(float(value))

    frame = table.frame
    return [{spec.id.name: str(frame[spec.id.alias].iloc[i])}
            | {col.name: raw(col, frame[col.alias].iloc[i]) for col in spec.columns} for i in range(len(frame))]
