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
from korllama.scoring import encode_distinct, too_long, too_long_sentence
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


@dataclass
class Rows:
    """A request's clean rows: rows `start:stop` of `table`, which the batch's other valid requests share."""

    table: Table
    start: int
    stop: int

    def alone(self) -> Table:
        """The request's own Table."""
        whole = self.start == 0 and self.stop == len(self.table)
        return self.table if whole else self.table.subset(np.arange(self.start, self.stop))


def clean_requests(requests: list[Applicants], spec: TableSpec) -> list[Table | HTTPException]:
    """A clean Table or a 422 for each request (see `clean_together`)."""
    return [r.alone() if isinstance(r, Rows) else r for r in clean_together(requests, spec)]


def clean_together(requests: list[Applicants], spec: TableSpec) -> list[Rows | HTTPException]:
    """Clean rows or a 422 for each request, in one `clean` call when all are valid (its cost is per call, not per
    row). A request with a bad value is judged alone (its message counts its own rows only) and left out; the
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
                out = [clean_together([requests[j]], spec)[0] if j in alive else x for j, x in enumerate(out)]
            else:  # judge the applicant's request alone; the others go on together
                j = alive.pop(int(np.searchsorted(starts, exc.row, side="right")) - 1)
                out[j] = clean_together([requests[j]], spec)[0]
                continue
            break
        for k, j in enumerate(alive):
            out[j] = Rows(table, int(starts[k]), int(starts[k + 1]))
        break
    return out


class Grader:
    """A batch of requests -> per request (clean rows, P(label) per row, reasons or None) or a 422; `stats` counts
    the work done. Runs on the worker's thread, the only one that touches the tokenizer and the model. A request
    that asks for reasons is scored by `explainer(table, top) -> (P(label), reasons)` (korllama.explain.explain_rows:
    its rows and their neutralised variants in one batched pass), the others together in one call of the run's
    `score_encoded` (rank scoring, or its classification head).

    The batch's requests share one clean table: its prompts are rendered and each distinct text tokenised once for
    all of them, and only the distinct prompts of the requests scored here reach the model (a request refused for a
    prompt over the length limit is not scored). The clean rows handed back are the request's own Table only for a
    request that asked for reasons; the others get None (the answer is built from the probabilities and the IDs)."""

    def __init__(self, system, batch_size: int, explainer=None):
        self.system, self.spec = system, system.spec
        self.batch_size, self.explainer = batch_size, explainer
        self.stats = {"requests": 0, "applicants": 0, "batches": 0, "forward_passes": 0, "largest_batch": 0}
        # the probabilities of prompts graded before (token ids -> row; korllama.scoring.KNOWN_LIMIT of them, then it
        # starts again): an applicant sent again, or a row the page graded, costs no forward pass
        self.recent: dict = {}

    def __call__(self, requests: list[Applicants]) -> list[tuple[Table | None, np.ndarray, list | None]
                                                            | HTTPException]:
        results: list = clean_together(requests, self.spec)
        llm = self.system.template is not None  # the trees read the table itself: no prompt, no tokens
        prompts = {}  # id(table) -> (each row's index among the distinct prompts, their token ids)
        for j, (request, rows) in enumerate(zip(requests, results)):
            if not isinstance(rows, Rows) or not llm:
                continue
            if id(rows.table) not in prompts:
                prompts[id(rows.table)] = encode_distinct(self.system.tokenizer,
                                                          self.system.template.render(rows.table))
            codes, distinct = prompts[id(rows.table)]
            found = too_long([distinct[c] for c in codes[rows.start:rows.stop]], self.system.max_tokens)
            if found is not None:
                i, tokens = found
                results[j] = HTTPException(422, [problem(
                    request.loc(i), too_long_sentence(request.where(i), tokens, self.system.max_tokens),
                    "prompt_too_long")])
        for j in [j for j, r in enumerate(results) if isinstance(r, Rows) and requests[j].explain
                  and self.explainer is not None]:
            table = results[j].alone()
            results[j] = (table, *self.explainer(table, requests[j].explain))
        scored = [j for j, r in enumerate(results) if isinstance(r, Rows)]
        if scored:
            parts = [results[j] for j in scored]
            proba = self._score(parts, prompts) if llm else self._predict(parts)
            starts = np.cumsum([0, *(results[j].stop - results[j].start for j in scored)])
            for k, j in enumerate(scored):
                results[j] = (None, proba[starts[k]:starts[k + 1]], None)
            s = self.stats
            s.update(requests=s["requests"] + len(scored), applicants=s["applicants"] + int(starts[-1]),
                     batches=s["batches"] + 1, largest_batch=max(s["largest_batch"], int(starts[-1])))
        return results

    def _score(self, parts: list[Rows], prompts: dict) -> np.ndarray:
        """P(label) for the rows of `parts`, in order: the distinct prompts among them scored once (or read from
        `recent`)."""
        offsets, distinct = {}, []  # one list of distinct prompts across the tables (one, unless a batch split)
        for key, (_, ids) in prompts.items():
            offsets[key] = len(distinct)
            distinct += ids
        codes = np.concatenate([offsets[id(p.table)] + prompts[id(p.table)][0][p.start:p.stop] for p in parts])
        used, where = np.unique(codes, return_inverse=True)  # only prompts of the requests scored here
        pending = [distinct[u] for u in used]
        fresh = len({tuple(ids) for ids in pending} - self.recent.keys())
        proba = self.system.score_encoded(pending, self.batch_size, known=self.recent,
                                          copies=np.bincount(where, minlength=len(used)))
        self.stats["forward_passes"] -= -fresh // self.batch_size  # ceil(new prompts / batch)
        return proba[where]

    def _predict(self, parts: list[Rows]) -> np.ndarray:
        """The trees' P(label) for the rows of `parts`, in order: each shared table predicted once."""
        tables = {id(p.table): p.table for p in parts}
        proba = {key: self.system.predict_proba(table) for key, table in tables.items()}
        self.stats["forward_passes"] -= -sum(p.stop - p.start for p in parts) // self.batch_size  # as the LLM's count
        return np.concatenate([proba[id(p.table)][p.start:p.stop] for p in parts])


class Batcher:
    """A queue and one worker task: whatever is pending (up to `max_applicants` applicants, waiting at most
    `max_wait_s` for more) goes to `grade(requests)` on a thread, one result per request. The worker starts with the
    first request in the running event loop (uvicorn, TestClient, httpx's ASGITransport alike), and again if that
    loop changed.

    A call is not a forward pass: the Grader scores a call's new prompts `max_batch` at a time. The service lets a
    call hold as many applicants as one request may send (MAX_APPLICANTS), because cleaning and rendering cost mostly
    per call (pandas' work per column, whatever the rows): the requests that wait together are cleaned together
    (benchmarks/RESULTS.md section 26: 32.5 -> about 550 applicants a call, 5.4-5.9x the applicants/s)."""

    def __init__(self, grade, max_applicants: int, max_wait_s: float):
        self.grade, self.max_applicants, self.max_wait_s = grade, max_applicants, max_wait_s
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
        while size < self.max_applicants:
            try:
                job = self._queue.get_nowait() if not self._queue.empty() else \
                    await asyncio.wait_for(self._queue.get(), deadline - time.monotonic())
            except TimeoutError:
                break
            if size + len(job[0]) > self.max_applicants:
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
