"""Micro-batching for `korllama serve`: the applicants of requests that arrive together are cleaned in one
`korllama.data.clean` call and scored in one call (the run's `score_encoded`) on a worker thread, while the event
loop goes on accepting requests. A bad value fails its own request only.

- `Applicants`: one request's applicants (raw strings keyed by alias, as a CSV row holds them) and where they are.
- `clean_requests`: a clean Table or a 422 per request, in one `clean` call when all are valid.
- `Grader`: what the worker does with a batch: clean, render the prompts, refuse over-long ones, score once.
- `Batcher`: the queue and the worker task.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from fastapi import HTTPException

from korllama.data import Table, clean
from korllama.errors import DataError
from korllama.scoring import encode_prompts, too_long, too_long_sentence
from korllama.spec import TableSpec


def problem(loc: list, msg: str, kind: str, value: Any = None) -> dict:
    """One entry of a 422's `detail`, located in the body like FastAPI's own."""
    return {"loc": ["body", *loc], "msg": msg, "type": kind} | ({} if value is None else {"input": value})


def as_text(value: Any) -> str:
    """A JSON value as the CSV would hold it: 36 -> '36', 36.0 -> '36', 0.25 -> '0.25', null -> ''."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return "" if value is None else str(value)


@dataclass
class Applicants:
    """One request's applicants after the shape check: raw strings keyed by alias (the ID too: a placeholder where
    the client sent none, so that clean checks the others are unique), and the ids as sent (None where none)."""

    single: bool  # the body was one applicant: errors say "applicant", not "applicants[i]"
    rows: list[dict[str, str]]
    ids: list[str | None]
    explain: int = 0  # top reasons wanted per applicant (?explain=true), 0 = none

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return "applicant" if self.single else f"applicants[{i}]"

    def loc(self, i: int, *rest) -> list:
        return list(rest) if self.single else [i, *rest]


def clean_requests(requests: list[Applicants], spec: TableSpec) -> list[Table | HTTPException]:
    """A clean Table or a 422 for each request, in one `clean` call when all are valid (its cost is per call, not
    per row). A request with a bad value is judged alone (its message counts its own rows only) and left out; the
    others are cleaned together again. IDs must be unique within a request (clean checks), not across requests."""
    out: list = [None] * len(requests)
    alive = list(range(len(requests)))
    while alive:
        starts = np.cumsum([0, *(len(requests[j]) for j in alive)])
        tag = len(alive) > 1  # two requests may send the same ID: told apart by their place in the batch
        frame = pd.DataFrame([r | {spec.id.alias: f"{r[spec.id.alias]}\x00{k}"} if tag else r
                              for k, j in enumerate(alive) for r in requests[j].rows], dtype=object)
        try:
            table = clean(frame, spec, source="request", row_label=None if tag else requests[alive[0]].where)
        except DataError as exc:
            if not tag:  # alone: the error is its own; its column named by alias and header, as either may be sent
                at = requests[alive[0]].loc(exc.row, exc.column) if exc.row is not None and exc.column else []
                col = next((c for c in spec.columns if c.alias == exc.column and c.name != c.alias), None)
                msg = str(exc).replace(f", column {col.alias}:", f", column {col.alias} ({col.name}):", 1) if col \
                    else str(exc)
                out[alive[0]] = HTTPException(422, [problem(at, msg, "value_error")])
            elif exc.row is None:  # no one applicant's fault: judge each request alone
                out = [clean_requests([requests[j]], spec)[0] if j in alive else x for j, x in enumerate(out)]
            else:  # judge the applicant's request alone; the others go on together
                j = alive.pop(int(np.searchsorted(starts, exc.row, side="right")) - 1)
                out[j] = clean_requests([requests[j]], spec)[0]
                continue
            break
        for k, j in enumerate(alive):
            out[j] = table if not tag else table.subset(np.arange(starts[k], starts[k + 1]))
        break
    return out


class Grader:
    """A batch of requests -> per request (clean rows, P(label) per row, reasons or None) or a 422; `stats` counts
    the work done. Runs on the worker's thread, the only one that touches the tokenizer and the model. A request
    that asks for reasons is scored by `explainer(table, top) -> (P(label), reasons)` (korllama.explain.explain_rows:
    its rows and their neutralised variants in one batched pass), the others together in one call of the run's
    `score_encoded` (rank scoring, or its classification head)."""

    def __init__(self, system, batch_size: int, explainer=None):
        self.system, self.spec = system, system.spec
        self.batch_size, self.explainer = batch_size, explainer
        self.stats = {"requests": 0, "applicants": 0, "batches": 0, "forward_passes": 0, "largest_batch": 0}
        # the probabilities of prompts graded before (token ids -> row; korllama.scoring.KNOWN_LIMIT of them, then it
        # starts again): an applicant sent again, or a row the page graded, costs no forward pass
        self.recent: dict = {}

    def __call__(self, requests: list[Applicants]) -> list[tuple[Table, np.ndarray] | HTTPException]:
        results: list = clean_requests(requests, self.spec)
        encoded: dict[int, list[list[int]]] = {}  # tokenised once: for the length check and for scoring
        llm = self.system.template is not None  # the trees read the table itself: no prompt, no tokens
        for j, (request, table) in enumerate(zip(requests, results)):
            if isinstance(table, Table):
                encoded[j] = encode_prompts(self.system.tokenizer, self.system.template.render(table)) if llm else \
                    [[]] * len(table)
                found = too_long(encoded[j], self.system.max_tokens) if llm else None
                if found is not None:
                    i, tokens = found
                    del encoded[j]
                    results[j] = HTTPException(422, [problem(
                        request.loc(i), too_long_sentence(request.where(i), tokens, self.system.max_tokens),
                        "prompt_too_long")])
        for j in [j for j in encoded if requests[j].explain and self.explainer is not None]:
            del encoded[j]
            results[j] = (results[j], *self.explainer(results[j], requests[j].explain))
        if encoded:
            rows = [ids for j in encoded for ids in encoded[j]]
            fresh = len({tuple(ids) for ids in rows} - self.recent.keys()) if llm else len(rows)
            proba = self.system.score_encoded(rows, self.batch_size, known=self.recent) if llm else \
                np.concatenate([self.system.predict_proba(results[j]) for j in encoded])
            starts = np.cumsum([0, *(len(encoded[j]) for j in encoded)])
            for k, j in enumerate(encoded):
                results[j] = (results[j], proba[starts[k]:starts[k + 1]], None)
            s = self.stats
            s.update(requests=s["requests"] + len(encoded), applicants=s["applicants"] + len(rows),
                     batches=s["batches"] + 1, largest_batch=max(s["largest_batch"], len(rows)),
                     forward_passes=s["forward_passes"] - (-fresh // self.batch_size))  # ceil(new prompts / batch)
        return results


class Batcher:
    """A queue and one worker task: whatever is pending (up to `max_batch` applicants, waiting at most `max_wait_s`
    for more) goes to `grade(requests)` on a thread, one result per request. The worker starts with the first request
    in the running event loop (uvicorn, TestClient, httpx's ASGITransport alike), and again if that loop changed."""

    def __init__(self, grade, max_batch: int, max_wait_s: float):
        self.grade, self.max_batch, self.max_wait_s = grade, max_batch, max_wait_s
        self._loop = self._queue = self._task = self._carry = None

    async def submit(self, applicants: Applicants):
        """This request's result, computed together with whatever else is pending (a 422 is raised)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._queue, self._carry = loop, asyncio.Queue(), None
            self._task = loop.create_task(self._run(), name="korllama-batcher")
        future = loop.create_future()
        self._queue.put_nowait((applicants, future))
        return await future

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _collect(self) -> list[tuple[Applicants, asyncio.Future]]:
        jobs, self._carry = [self._carry or await self._queue.get()], None
        size, deadline = len(jobs[0][0]), time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait() if not self._queue.empty() else \
                    await asyncio.wait_for(self._queue.get(), deadline - time.monotonic())
            except TimeoutError:
                break
            if size + len(job[0]) > self.max_batch:
                self._carry = job  # first of the next batch
                break
            jobs.append(job)
            size += len(job[0])
        return [job for job in jobs if not job[1].done()]  # a client that went away is not scored

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            try:
                results = await asyncio.to_thread(self.grade, [a for a, _ in jobs]) if jobs else []
            except Exception as exc:  # a bug: every waiting request gets a 500, the worker lives on
                results = [exc] * len(jobs)
            for (_, future), result in zip(jobs, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
