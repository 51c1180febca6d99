"""korllama.serve.batching without a model: several requests cleaned in one call (a bad value fails its own request
only, with the message it would get alone; IDs are unique within a request, not across), and the Batcher's queue
(concurrent requests in one batch, `max_applicants` respected, a bug reaches every waiting request, not the worker).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi import HTTPException

from korllama.data import Table
from korllama.serve.batching import Applicants, Batcher, as_text, clean_requests
from korllama.spec import load_spec
from korllama.synth import synthesize

SPEC = load_spec()


def request(rows: int, seed: int, ids: list[str | None] | None = None, single: bool = False, **changes) -> Applicants:
    """Raw rows keyed by alias as the service builds them (an absent ID is a placeholder), `changes` on the last."""
    frame = synthesize(rows, seed=seed).drop(columns=["ID", "대출등급"]).astype(str)
    frame = frame.rename(columns={c.name: c.alias for c in SPEC.columns})
    ids = ids or [None] * rows
    out = [r | {"id": f"\x00{i}" if x is None else x} for i, (r, x) in enumerate(zip(frame.to_dict("records"), ids))]
    out[-1] |= changes
    return Applicants(single, out, ids)


def test_as_text_writes_json_values_as_the_csv_would():
    assert [as_text(v) for v in (36, 36.0, 0.25, None, " 36 months")] == ["36", "36", "0.25", "", " 36 months"]


def test_requests_are_cleaned_together_each_with_its_own_rows():
    requests = [request(3, seed=1, ids=["A", "B", "C"]), request(1, seed=2, ids=["A"]), request(2, seed=3)]
    tables = clean_requests(requests, SPEC)  # "A" twice, in two requests: allowed
    assert all(isinstance(t, Table) for t in tables) and [len(t) for t in tables] == [3, 1, 2]
    for r, t in zip(requests, tables):  # the same clean values as each request cleaned alone
        alone = clean_requests([r], SPEC)[0]
        np.testing.assert_array_equal(t.frame["loan_amount"].to_numpy(), alone.frame["loan_amount"].to_numpy())


def test_a_bad_value_fails_its_own_request_with_the_message_it_gets_alone():
    good, bad = request(2, seed=1), request(3, seed=2, term=" 48 months")
    twin = request(2, seed=3, ids=["X", "X"])
    together = clean_requests([good, bad, request(1, seed=4), twin], SPEC)
    assert isinstance(together[0], Table) and isinstance(together[2], Table)
    for got, alone in ((together[1], clean_requests([bad], SPEC)[0]), (together[3], clean_requests([twin], SPEC)[0])):
        assert isinstance(got, HTTPException) and got.status_code == 422 and got.detail == alone.detail
    assert together[1].detail[0]["loc"] == ["body", 2, "term"]
    assert together[1].detail[0]["msg"].startswith("applicants[2], column term (대출기간): ' 48 months'")
    assert together[3].detail[0]["msg"].startswith("applicants[1], column id: duplicate ID 'X' (also applicants[0])")
    one = clean_requests([request(1, seed=5, single=True, loan_amount="-5")], SPEC)[0]
    assert one.detail[0]["loc"] == ["body", "loan_amount"] and one.detail[0]["msg"].startswith("applicant, column")


def test_the_batcher_batches_concurrent_requests_within_max_applicants():
    seen: list[list[int]] = []

    def grade(requests):
        seen.append([len(r) for r in requests])
        return [len(r) for r in requests]

    async def go():
        batcher = Batcher(grade, max_applicants=5, max_wait_s=0.2)
        try:
            return await asyncio.gather(*(batcher.submit(request(n, seed=n)) for n in (2, 2, 1, 3, 1)))
        finally:
            await batcher.aclose()

    assert asyncio.run(go()) == [2, 2, 1, 3, 1]  # each request its own result
    assert seen == [[2, 2, 1], [3, 1]]  # 5 applicants at most per batch; the request that did not fit starts the next


def test_a_bug_in_grading_reaches_every_waiting_request_and_the_worker_lives_on():
    calls = []

    def grade(requests):
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return ["ok"] * len(requests)

    async def go():
        batcher = Batcher(grade, max_applicants=64, max_wait_s=0.05)
        try:
            failed = await asyncio.gather(*(batcher.submit(request(1, seed=s)) for s in (1, 2)),
                                          return_exceptions=True)
            return failed, await batcher.submit(request(1, seed=3))
        finally:
            await batcher.aclose()

    failed, after = asyncio.run(go())
    assert [type(e) for e in failed] == [RuntimeError, RuntimeError] and after == "ok" and calls == [2, 1]


@pytest.mark.parametrize("bad", [{"loan_amount": "abc"}, {"purpose": "여행"}])
def test_a_lone_bad_request_is_cleaned_once(bad, monkeypatch):
    import korllama.serve.batching as batching

    calls = []
    real = batching.clean
    monkeypatch.setattr(batching, "clean", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert isinstance(clean_requests([request(2, seed=1, **bad)], SPEC)[0], HTTPException) and len(calls) == 1
