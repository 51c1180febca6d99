"""Where a `korllama serve` request's CPU goes, in one process: the app under httpx's ASGI transport (no sockets),
the grading worker run inline, so that every part runs on one thread and is timed there (time.thread_time around
each part; no profiler).

    python benchmarks/serve_profile.py RUN --data ../shared/data/dacon-loan/test.csv

Rounds of 32 concurrent requests, half one applicant and half `--batch` (64), the CSV's rows in order, after a
warm-up that grades `--warm` rows (so most prompts are recent ones, as in a long load; --warm 0 for a cold start).
Printed: CPU microseconds per applicant of the whole process (the client too) and of each part: reading the JSON
body, pydantic's validation of the request and of the answer (FastAPI checks a response_model), the worker's call
(cleaning, rendering, tokenising, scoring), the answer's serialisation and JSON encoding; the rest is HTTP in-process,
routing, middleware, building each applicant's row and result, and the client (httpx). For the live service's
figures use benchmarks/load_serve.py (it reports the server's CPU apart from the client's).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pandas as pd

SPENT: dict[str, float] = defaultdict(float)  # part -> CPU seconds


def timed(part, function):
    """`function`, its thread CPU time added to SPENT[part] (or SPENT[part(args, kwargs)])."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT[part(args, kwargs) if callable(part) else part] += time.thread_time() - started
    return wrapper


def instrument(app) -> None:
    """Wrap the parts in place (module attributes and methods, so that every caller goes through the wrapper)."""
    from fastapi._compat import v2
    from starlette.responses import JSONResponse

    import korllama.serve.batching as batching
    import korllama.serve.errors as errors

    grader = app.state.batcher.grade
    run = grader.system
    errors.parse_json = timed("reading the JSON body", errors.parse_json)
    v2.ModelField.validate = timed(lambda a, k: "pydantic: the answer (response_model)"
                                   if k.get("loc", ("",))[0] == "response" else "pydantic: the request",
                                   v2.ModelField.validate)
    v2.ModelField.serialize = timed("the answer's serialisation and JSON", v2.ModelField.serialize)
    v2.ModelField.serialize_json = timed("the answer's serialisation and JSON", v2.ModelField.serialize_json)
    JSONResponse.render = timed("the answer's serialisation and JSON", JSONResponse.render)
    app.state.batcher.grade = timed("the worker's call (Grader), all of it", grader)
    batching.clean_together = timed("  cleaning (korllama.data.clean)", batching.clean_together)
    batching.encode_distinct = timed("  tokenising the distinct prompts", batching.encode_distinct)
    if run.template is not None:
        object.__setattr__(run.template, "render", timed("  rendering the prompts", run.template.render))
        run.score_encoded = timed("  scoring (the model, or the recent prompts)", run.score_encoded)
    else:
        run.predict_proba = timed("  scoring (the trees)", run.predict_proba)


async def measure(app, rows: list[dict], rounds: int, batch: int, warm: int) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for start in range(0, warm, 1000):
            assert (await client.post("/v1/grade", json=rows[start:start + 1000])).status_code == 200
        SPENT.clear()
        taken = 0

        def body(k: int):
            nonlocal taken
            n = 1 if k % 2 == 0 else batch
            chosen = [rows[(taken + i) % len(rows)] for i in range(n)]
            taken += n
            return chosen[0] if n == 1 else chosen

        started, cpu = time.perf_counter(), time.thread_time()
        for _ in range(rounds):
            answers = await asyncio.gather(*(client.post("/v1/grade", json=body(k)) for k in range(32)))
            assert all(a.status_code == 200 for a in answers)
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
    applicants = rounds * 16 * (1 + batch)
    stats = app.state.stats
    print(f"{applicants:,} applicants in {rounds} rounds of 32 requests: {wall / applicants * 1e6:.0f} us wall, "
          f"{cpu / applicants * 1e6:.0f} us CPU each (this thread: the client and the server); {stats['batches']:,} "
          f"worker calls in all, {stats['forward_passes']:,} forward passes")
    print("| part | CPU us per applicant | share |\n| --- | ---: | ---: |")
    worker = sorted((p for p in SPENT if p.startswith(("the worker", " "))), key=lambda p: p.startswith(" "))
    for part in [*worker, *(p for p in SPENT if p not in worker)]:
        print(f"| {part} | {SPENT[part] / applicants * 1e6:.1f} | {SPENT[part] / cpu:.0%} |")
    rest = cpu - sum(s for p, s in SPENT.items() if not p.startswith(" "))
    print(f"| the rest: HTTP in-process, routing, middleware, each applicant's row and result, the client | "
          f"{rest / applicants * 1e6:.1f} | {rest / cpu:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", type=Path, help="a run folder or the trees' folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/dacon-loan/test.csv"))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warm", type=int, default=30_000)
    args = parser.parse_args()

    async def inline(function, *args, **kwargs):  # the worker's thread: here the one thread that is timed
        return function(*args, **kwargs)
    asyncio.to_thread = inline

    from korllama.cli.serving import _idle_threads_sleep

    _idle_threads_sleep()  # as `korllama serve` does, before torch loads
    from korllama.serve import create_app
    from korllama.system import load_system

    app = create_app(load_system(args.system))
    instrument(app)
    rows = pd.read_csv(args.data, dtype=str, keep_default_na=False).to_dict("records")
    asyncio.run(measure(app, rows, args.rounds, args.batch, args.warm))


if __name__ == "__main__":
    main()
