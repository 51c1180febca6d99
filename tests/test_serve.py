"""The HTTP scoring service (korllama.serve): health, grading one and many applicants (raw Korean or clean English),
the same grades as `korllama predict`, a clear 4xx for every malformed body and never a 5xx, the bearer token,
micro-batching of concurrent requests, the OpenAPI schema and the `korllama serve` command.

Everything runs on the shared tiny run (tests/conftest.py) in-process: FastAPI's TestClient, or httpx over
ASGITransport for concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from fixtures import CLASSES, HEADER, TEST_00000, unlabelled_csv
from pydantic import ValidationError

from korllama.data import DataWarning, clean
from korllama.errors import KorllamaError
from korllama.predict import predict_file
from korllama.run import Run
from korllama.scoring import score
from korllama.serve import applicant_model, create_app, example_applicant, result_model
from korllama.serve.batching import Applicants, Grader, as_text
from korllama.spec import load_spec
from korllama.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
SPEC = load_spec()
DROP = object()


def raw_applicants(rows: int, seed: int = 11) -> list[dict]:
    """Applicants as the CSV has them: Korean headers, every value a raw string."""
    return synthesize(rows, seed=seed).drop(columns=["대출등급"]).astype(str).to_dict("records")


def raw_applicant(**changes) -> dict:
    """One raw applicant (no ID) with the quirky formats, `changes` applied (a key given DROP is removed)."""
    row = raw_applicants(1)[0] | {"대출기간": " 36 months", "근로기간": "10+ years", "대출목적": "부채 통합"}
    row.pop("ID")
    for key, value in changes.items():
        if value is DROP:
            row.pop(key)
        else:
            row[key] = value
    return row


def as_clean_english(row: dict) -> dict:
    """The same applicant with English keys and clean JSON values (36, 10, "debt consolidation")."""
    frame = clean(pd.DataFrame([row]).drop(columns=["ID"], errors="ignore"), SPEC).frame
    out = {}
    for col in SPEC.columns:
        value = frame[col.alias].iloc[0]
        out[col.alias] = None if pd.isna(value) else (value if isinstance(value, str) else
                                                        int(value) if col.integer else float(value))
    return out


@pytest.fixture(scope="module")
def app(run_dir):
    return create_app(Run.load(run_dir))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def assert_result(result: dict) -> None:
    assert set(result) - {"reasons"} == {"id", "grade", "probabilities", "template", "decision"}
    assert result.get("reasons") is None and result["decision"] == "argmax"  # reasons only with ?explain=true
    assert list(result["probabilities"]) == CLASSES
    assert result["grade"] == max(result["probabilities"], key=result["probabilities"].get)
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
    assert result["template"] == "compact"


# --- health and docs ---------------------------------------------------------------------------------------------

def test_health(client, run_dir):
    r = client.get("/health")
    assert r.status_code == 200
    health = r.json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["run"] == run_dir.name
    assert health["labels"] == CLASSES and health["template"] == "compact" and health["auth"] is False


def test_openapi_schema_and_docs(client):
    schema = client.get("/openapi.json").json()
    grade = schema["paths"]["/v1/grade"]["post"]
    body = grade["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/Applicant"} in body["anyOf"]
    assert any(s.get("maxItems") == 1024 for s in body["anyOf"])
    applicant = schema["components"]["schemas"]["Applicant"]
    assert {"loan_amount", "term", "purpose", "id"} <= set(applicant["properties"])
    assert "대출기간" in applicant["properties"]["term"]["description"]
    assert "36, 60" in applicant["properties"]["term"]["description"]
    assert "employment_length" not in applicant["required"] and "term" in applicant["required"]
    assert client.get("/docs").status_code == 200


def test_docs_load_their_scripts_from_the_service_not_a_cdn(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert assets and all(a.startswith("/") for a in assets), assets  # served here: the docs work offline
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200, asset
        bundles = [a for a in assets if a.startswith("/static-offline-docs/")]  # Swagger UI's or ReDoc's own
        assert bundles and all(len(client.get(a).content) > 50_000 for a in bundles if a.endswith(".js")), assets


def test_the_answer_schema_has_the_specs_labels(client):
    result = client.get("/openapi.json").json()["components"]["schemas"]["GradeResult"]["properties"]
    assert result["grade"]["enum"] == CLASSES and result["probabilities"]["propertyNames"]["enum"] == CLASSES
    assert "grade" in result["grade"]["description"]  # the spec's label alias


def test_the_docs_examples_come_from_the_spec_and_are_graded(client):
    body = client.get("/openapi.json").json()["paths"]["/v1/grade"]["post"]["requestBody"]["content"]
    examples = body["application/json"]["examples"]
    assert set(examples["one applicant"]["value"]) == {"ID", *(c.name for c in SPEC.columns)}
    for example in examples.values():  # "Try it out" answers 200
        r = client.post("/v1/grade", json=example["value"])
        assert r.status_code == 200, r.text


def test_types_and_example_follow_any_spec():
    """Another table (Korean labels and headers): the answer's labels and the example body are that spec's."""
    spec = load_spec(REPO / "examples" / "hiring" / "spec.yaml")
    labels = ["우수", "보통", "미흡"]
    result = result_model(spec)
    schema = result.model_json_schema()["properties"]
    assert schema["grade"]["enum"] == labels and schema["probabilities"]["propertyNames"]["enum"] == labels
    ok = {"id": None, "grade": "보통", "probabilities": dict.fromkeys(labels, 1 / 3), "template": "ko",
          "decision": "argmax"}
    assert result.model_validate(ok).grade == "보통"
    with pytest.raises(ValidationError):
        result.model_validate(ok | {"grade": "A"})
    example = example_applicant(spec)
    assert set(example) == {"지원번호", *(c.name for c in spec.columns)} and example["학력"] == "고졸"
    applicant_model(spec).model_validate(example)
    row = {k: as_text(v) for k, v in example.items()}
    assert len(clean(pd.DataFrame([row], dtype=object), spec)) == 1  # and its values are the spec's


# --- grading -----------------------------------------------------------------------------------------------------

def test_one_applicant_raw_korean_and_clean_english_give_the_same_grade(client):
    raw = raw_applicant(ID="TEST_00007")
    r = client.post("/v1/grade", json=raw)
    assert r.status_code == 200, r.text
    korean = r.json()
    assert_result(korean)
    assert korean["id"] == "TEST_00007"

    english = as_clean_english(raw)
    assert english["term"] == 36 and english["employment_length"] == 10
    assert english["purpose"] == "debt consolidation"
    r = client.post("/v1/grade", json=english)
    assert r.status_code == 200, r.text
    clean_result = r.json()
    assert clean_result["id"] is None
    assert clean_result["grade"] == korean["grade"]
    for c in CLASSES:
        assert abs(clean_result["probabilities"][c] - korean["probabilities"][c]) < 1e-6


def test_many_applicants_match_korllama_predict(client, run_dir, tmp_path):
    csv = unlabelled_csv(tmp_path / "test.csv", rows=25)
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False).to_dict("records")
    r = client.post("/v1/grade", json=rows)
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and len(results) == 25
    for result in results:
        assert_result(result)

    predict_file(Run.load(run_dir), csv, tmp_path / "sub.csv", with_proba=True)
    expected = pd.read_csv(tmp_path / "sub.csv", dtype={"ID": str, "대출등급": str})
    assert [x["id"] for x in results] == expected["ID"].tolist()  # input order
    assert [x["grade"] for x in results] == expected["대출등급"].tolist()
    served = np.array([[x["probabilities"][c] for c in CLASSES] for x in results])
    np.testing.assert_allclose(served, expected[[f"P_{c}" for c in CLASSES]].to_numpy(), atol=1e-4)


def test_a_list_of_one_gives_a_list(client):
    r = client.post("/v1/grade", json=[raw_applicant()])
    assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) == 1


# --- malformed bodies: a 4xx naming the problem, never a 5xx -----------------------------------------------------

MALFORMED = {  # case -> (body: json or raw bytes, status, pieces of the message)
    "missing field": (lambda: [raw_applicant(), raw_applicant(대출금액=DROP)], 422,
                      ["applicants[1]", "loan_amount (대출금액)", "missing", "whole number"]),
    "wrong type": (lambda: raw_applicant(대출기간=[36]), 422, ["applicant", "대출기간", "[36]", "36, 60"]),
    "null for a required field": (lambda: raw_applicant(연간소득=None), 422, ["연간소득", "null", "whole number"]),
    "boolean amount": (lambda: raw_applicant(대출금액=True), 422, ["대출금액", "true", "whole number"]),
    "unknown term": (lambda: [raw_applicant(), raw_applicant(), raw_applicant(대출기간=" 48 months")], 422,
                     ["applicants[2]", "term", "' 48 months'", "36, 60"]),
    "negative amount": (lambda: raw_applicant(대출금액="-1200000"), 422, ["loan_amount", "'-1200000'", ">= 0"]),
    "negative amount as a number": (lambda: as_clean_english(raw_applicant()) | {"loan_amount": -5}, 422,
                                    ["loan_amount", "'-5'", ">= 0"]),
    "unknown purpose": (lambda: raw_applicant(대출목적="여행"), 422, ["purpose", "'여행'", "부채 통합"]),
    "infinite amount": (lambda: raw_applicant(총상환원금="1e400"), 422, ["principal_repaid", "'1e400'"]),
    "unknown key": (lambda: raw_applicant(loan_amt=5), 422, ["unknown field 'loan_amt'", "loan_amount"]),
    "a column twice": (lambda: raw_applicant(term=36), 422, ["term (대출기간)", "twice"]),
    "duplicate ids": (lambda: [raw_applicant(ID="X1"), raw_applicant(ID="X1")], 422, ["applicants[1]", "duplicate"]),
    "too long a value": (lambda: raw_applicant(대출목적="x" * 1000), 422, ["대출목적", "longer than 200"]),
    "2,000 applicants": (lambda: [raw_applicant()] * 2000, 422, ["2,000 applicants", "1,024"]),
    "empty list": (lambda: [], 422, ["empty"]),
    "not an object": (lambda: [raw_applicant(), 7], 422, ["applicants[1]", "JSON number", "object"]),
    "a string body": (lambda: "hello", 422, ["JSON string"]),
    "not JSON": (lambda: b"ID,\xeb\x8c\x80\xec\xb6\x9c\xea\xb8\x88\xec\x95\xa1\nTEST_0,1", 422, ["not valid JSON"]),
    "truncated JSON": (lambda: json.dumps(raw_applicant()).encode()[:-3], 422, ["not valid JSON"]),
    "NaN": (lambda: b'{"ID": "x", "loan_amount": NaN}', 422, ["not valid JSON", "NaN"]),
    "empty body": (lambda: b"", 422, ["empty"]),
    "deeply nested": (lambda: b"[" * 100_000, 422, ["not valid JSON"]),
}


def post(client, body, headers: dict | None = None) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post("/v1/grade", content=body, headers={"content-type": "application/json"} | (headers or {}))
    return client.post("/v1/grade", json=body, headers=headers)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_bodies_get_a_4xx_naming_the_problem(client, case):
    make, status, pieces = MALFORMED[case]
    r = post(client, make())
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    message = " ".join(d["msg"] for d in detail) if isinstance(detail, list) else detail
    for piece in pieces:
        assert piece in message, (piece, message)
    if isinstance(detail, list):
        assert all(d["loc"][0] == "body" for d in detail)


def test_a_bad_field_is_located_by_applicant_and_field(client):
    r = post(client, [raw_applicant(), raw_applicant(대출기간=" 48 months")])
    assert r.json()["detail"][0]["loc"] == ["body", 1, "term"]
    r = post(client, [raw_applicant(), {k: v for k, v in raw_applicant().items() if k != "총계좌수"}])
    assert r.json()["detail"][0]["loc"] == ["body", 1, "total_accounts"]


def test_many_bad_applicants_are_listed_up_to_a_limit(client):
    r = post(client, [raw_applicant(대출금액=[1])] * 50)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) == 21 and "30 more" in detail[-1]["msg"]


def test_a_body_over_the_limit_is_413(run_dir):
    small = create_app(Run.load(run_dir), max_body_bytes=2000)
    with TestClient(small, base_url="http://localhost") as client:
        assert post(client, raw_applicant()).status_code == 200  # about 600 bytes
        r = post(client, [raw_applicant()] * 10)  # declared Content-Length
        assert r.status_code == 413 and "2,000 bytes" in r.json()["detail"]
        data = json.dumps([raw_applicant()] * 10).encode()
        chunks = (data[i:i + 500] for i in range(0, len(data), 500))
        r = client.post("/v1/grade", content=chunks)  # streamed: no Content-Length, the real size counts
        assert r.status_code == 413


def test_odd_but_valid_values_never_give_a_5xx(client):
    for row in (raw_applicant(총상환원금="9" * 150), raw_applicant(근로기간=None), raw_applicant(근로기간="Unknown"),
                raw_applicant(ID=12345), raw_applicant(대출금액=1.2e7)):
        r = post(client, row)
        assert r.status_code in (200, 422), r.text
    with pytest.warns(DataWarning, match="wedding"):  # as in `korllama predict`: an unseen purpose counts as other
        assert post(client, raw_applicant(대출목적="결혼")).status_code == 200
    assert post(client, raw_applicant(근로기간=DROP)).status_code == 200  # a nullable field may be left out


@pytest.mark.parametrize("changes", [{"ID": "\ud800"}, {"대출목적": "부채\udc00 통합"}, {"대출금액": "12\ud83d"},
                                     {"\ud800": "1"}])
def test_an_unpaired_surrogate_is_a_422_not_a_500(client, changes):
    """Valid JSON ("\\ud800" escapes are allowed), but not text: it could not even be written back."""
    for body in (raw_applicant(**changes), [raw_applicant(), raw_applicant(**changes)]):
        sent = json.dumps(body).encode()  # ASCII: the surrogate goes over the wire as its JSON escape
        assert b"\\ud8" in sent or b"\\udc" in sent
        r = post(client, sent)
        assert r.status_code == 422, r.text
        problem, key = r.json()["detail"][0], next(iter(changes))
        at = [] if key == "\ud800" else [key]  # a key pydantic cannot read: the applicant is named
        assert problem["loc"][1:] == (at if isinstance(body, dict) else [1, *at])
        assert "unpaired surrogate" in problem["msg"] and problem["msg"].startswith(
            "applicant" if isinstance(body, dict) else "applicants[1]")


def test_a_body_not_sent_as_json_is_415(client):
    body = json.dumps(raw_applicant()).encode()
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        r = client.post("/v1/grade", content=body, headers=headers)  # a browser may send these across sites
        assert r.status_code == 415, (headers, r.text)
        assert "content-type: application/json" in r.json()["detail"]
    for kind in ("application/json; charset=utf-8", "application/problem+json"):
        assert client.post("/v1/grade", content=body, headers={"content-type": kind}).status_code == 200


def test_a_charset_other_than_utf8_is_415(client):
    body = json.dumps(raw_applicant(), ensure_ascii=False).encode("latin-1", "replace")
    for kind in ("application/json; charset=latin-1", 'application/json; charset="ISO-8859-1"'):
        r = client.post("/v1/grade", content=body, headers={"content-type": kind})
        assert r.status_code == 415 and "read as UTF-8" in r.json()["detail"], r.text
    r = client.post("/v1/grade", content=json.dumps(raw_applicant()).encode(),
                    headers={"content-type": "application/json; charset=UTF-8"})
    assert r.status_code == 200, r.text


def test_the_readme_serve_example_sends_test_00000_as_it_is(client):
    readme = (REPO / "README.md").read_text("utf-8")
    serving = readme[readme.index("## Serving"):]
    sent = json.loads(re.search(r"-d '(\{.*?\})'", serving, re.S).group(1))
    assert sent == dict(zip(HEADER.split(","), TEST_00000.split(",")))  # the row of ../shared's test.csv
    answer = json.loads(re.search(r"\n(\{\"id\".*?\})\n```", serving, re.S).group(1).replace("\n", ""))
    assert answer["id"] == "TEST_00000" and list(answer["probabilities"]) == CLASSES
    assert list(answer) == list(client.post("/v1/grade", json=sent).json())  # the answer's shape as served today


def test_other_methods_and_paths_are_4xx(client):
    assert client.get("/v1/grade").status_code == 405
    assert client.get("/nope").status_code == 404


# --- bearer token --------------------------------------------------------------------------------------------------

def test_bearer_token_when_the_env_var_is_set(run_dir, monkeypatch):
    monkeypatch.setenv("KORLLAMA_TEST_TOKEN", "s3cret")
    guarded = create_app(Run.load(run_dir), token_env="KORLLAMA_TEST_TOKEN")
    with TestClient(guarded, base_url="http://localhost") as client:
        assert client.get("/health").status_code == 200 and client.get("/health").json()["auth"] is True
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
        r = post(client, raw_applicant())
        assert r.status_code == 401 and "Bearer" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
        assert post(client, raw_applicant(), headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(client, raw_applicant(), headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
        assert post(client, b"not json", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = post(client, raw_applicant(), headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["grade"] in CLASSES


# --- micro-batching ------------------------------------------------------------------------------------------------

def test_concurrent_requests_are_scored_together(run_dir, client):
    batching = create_app(Run.load(run_dir), max_wait_ms=300)
    bodies = [raw_applicants(1 + i % 3, seed=20 + i) for i in range(8)]
    bad = [[raw_applicant(), raw_applicant(대출기간=" 48 months")], raw_applicant(대출금액="-1"),  # pydantic refuses
           [raw_applicant(ID="X1"), raw_applicant(ID="X2"), raw_applicant(ID="X1")]]  # clean refuses, in the batch

    async def send_together():
        transport = httpx.ASGITransport(app=batching)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as ac:
                return await asyncio.gather(*(ac.post("/v1/grade", json=b) for b in [*bad, *bodies]))
        finally:
            await batching.state.batcher.aclose()

    responses = asyncio.run(send_together())
    refused, responses = responses[:len(bad)], responses[len(bad):]
    assert [r.status_code for r in responses] == [200] * 8  # bad requests in the same batch do not spoil it
    for body, r in zip(bad, refused):  # each bad request gets the message it would get alone
        assert r.status_code == 422 and r.json() == client.post("/v1/grade", json=body).json()
    assert refused[0].json()["detail"][0]["msg"].startswith("applicants[1], column term (대출기간): ' 48 months'")
    assert refused[2].json()["detail"][0]["msg"].startswith("applicants[2], column id: duplicate ID 'X1'")
    stats = batching.state.stats
    assert stats["requests"] == 8 and stats["applicants"] == sum(len(b) for b in bodies)
    assert stats["batches"] < 8 and stats["forward_passes"] < 8
    for body, r in zip(bodies, responses):  # batched with others, each request gets its own rows' results
        alone = client.post("/v1/grade", json=body).json()
        assert [x["grade"] for x in r.json()] == [x["grade"] for x in alone]
        for got, want in zip(r.json(), alone):
            assert max(abs(got["probabilities"][c] - want["probabilities"][c]) for c in CLASSES) < 1e-4


def test_a_prompt_over_the_runs_length_limit_is_refused_alone(run_dir, tmp_path):
    copy = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "logs"))
    config = yaml.safe_load((copy / "config.yaml").read_text("utf-8"))
    config["train"]["max_length"] = 16  # shorter than any prompt of this run: every applicant is too long
    (copy / "config.yaml").write_text(yaml.safe_dump(config), "utf-8")
    with TestClient(create_app(Run.load(copy)), base_url="http://localhost") as short:
        r = short.post("/v1/grade", json=[raw_applicant(), raw_applicant()])
    assert r.status_code == 422
    problem = r.json()["detail"][0]
    assert problem["type"] == "prompt_too_long" and problem["loc"][:2] == ["body", 0]
    assert "more than this run's limit of 16" in problem["msg"]


def test_a_request_larger_than_max_batch_is_scored_in_several_passes(run_dir, client):
    small = create_app(Run.load(run_dir), max_batch=4)
    body = raw_applicants(10, seed=5)
    with TestClient(small, base_url="http://localhost") as c:
        results = c.post("/v1/grade", json=body).json()
    assert [x["grade"] for x in results] == [x["grade"] for x in client.post("/v1/grade", json=body).json()]
    assert small.state.stats["forward_passes"] == 3 and small.state.stats["applicants"] == 10  # 4 + 4 + 2


def test_an_applicant_graded_again_costs_no_forward_pass(run_dir, monkeypatch):
    import korllama.scoring as scoring

    real, ran = scoring._score_batch, []  # the model's batches as they really run, not the service's own count
    monkeypatch.setattr(scoring, "_score_batch", lambda *a, **k: ran.append(len(a[2])) or real(*a, **k))
    app = create_app(Run.load(run_dir), max_batch=4)
    body = raw_applicants(3, seed=11)
    with TestClient(app, base_url="http://localhost") as c:
        first = c.post("/v1/grade", json=body).json()
        passes = app.state.stats["forward_passes"]
        again = c.post("/v1/grade", json=body).json()
        assert app.state.stats["forward_passes"] == passes == 1  # the second time from the recent prompts
        assert ran == [3]  # one batch of the 3 prompts, the first time only
        assert [x["probabilities"] for x in again] == [x["probabilities"] for x in first]
        new = raw_applicants(1, seed=12)[0] | {"ID": "NEW_1"}  # its synthetic ID is body[0]'s
        one_new = c.post("/v1/grade", json=[*body, new]).json()
    assert app.state.stats["forward_passes"] == 2 and len(one_new) == 4 and ran == [3, 1]  # only the new prompt
    plain = Run.load(run_dir)  # the same rows scored afresh, without the service's memory
    from korllama.spec import load_spec

    table = clean(pd.DataFrame(body), load_spec())
    expected = plain.predict_proba(table)
    got = np.array([[x["probabilities"][c] for c in plain.classes] for x in again])
    assert np.abs(got - expected).max() <= 1e-6


def test_requests_graded_together_give_the_plain_paths_probabilities(run_dir):
    """A batch's requests are cleaned, rendered and tokenised once and their distinct prompts scored once (repeats
    within and across requests): each request gets what scoring its own rows alone, every row, gives."""
    run = Run.load(run_dir)
    spec = run.spec

    def request(rows: list[dict]) -> Applicants:  # as the endpoint builds it: alias keys, raw strings
        out = [{c.alias: r[c.name] for c in spec.columns} | {spec.id.alias: f"\x00{i}"} for i, r in enumerate(rows)]
        return Applicants(False, out, [None] * len(rows))

    bodies = [raw_applicants(1, seed=40), raw_applicants(7, seed=41), raw_applicants(3, seed=42)]
    bodies += [bodies[1][2:5], bodies[1][:1] * 2]  # rows sent again, in another request and twice in one
    grader = Grader(run, batch_size=4)
    together = grader([request(b) for b in bodies])
    again = grader([request(b) for b in reversed(bodies)])[::-1]  # every prompt now from the recent ones
    assert grader.stats["batches"] == 2 and grader.stats["applicants"] == 2 * sum(map(len, bodies))
    for body, first, second in zip(bodies, together, again):
        table = clean(pd.DataFrame(body).drop(columns=["ID"]), spec)
        plain = score(run.model, run.tokenizer, run.template.render(table), run.classes, batch_size=1, once=False,
                      shared_prefix=False)
        for got in (first, second):
            assert got[0] is None and got[2] is None and got[1].shape == plain.shape
            assert np.abs(got[1] - plain).max() <= 1e-6


# --- safety and the command ------------------------------------------------------------------------------------------

def test_weights_that_are_not_safetensors_are_refused(run_dir, tmp_path):
    copy = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "logs"))
    (copy / "model" / "model.safetensors").rename(copy / "model" / "pytorch_model.bin")
    with pytest.raises(KorllamaError, match="safetensors"):
        create_app(Run.load(copy))


def test_serve_command_binds_loopback_by_default(cli, run_dir, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    code, out, err = cli("serve", run_dir)
    assert code == 0, err
    assert calls[0][1]["host"] == "127.0.0.1" and calls[0][1]["port"] == 8000
    assert "http://127.0.0.1:8000" in out
    assert calls[0][0].state.batcher.grade.batch_size == 64

    code, out, err = cli("serve", run_dir, "--host", "0.0.0.0", "--port", 8765, "--max-batch", 8)
    assert code == 0, err
    assert calls[1][1]["host"] == "0.0.0.0" and calls[1][1]["port"] == 8765
    assert "without a token" in " ".join(err.split()) and calls[1][0].state.batcher.grade.batch_size == 8


def test_serve_lets_idle_openmp_threads_sleep_unless_told_otherwise():
    """Set before torch loads (libgomp reads it once): in a fresh process, as `korllama serve` runs it."""
    code = ("import os, sys; from korllama.cli.serving import _idle_threads_sleep; assert 'torch' not in sys.modules; "
            "_idle_threads_sleep(); import torch; print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env | ({"OMP_WAIT_POLICY": given} if given else {}))
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == expected


def test_serve_command_with_a_folder_that_is_not_a_run(cli, tmp_path):
    code, _, err = cli("serve", tmp_path)
    assert code == 2 and "not a korllama run directory" in err and "Traceback" not in err
    assert "--base" not in err and "korllama train" in err  # serve has no --base to suggest


# --- reasons (?explain=true) and the decision rule ----------------------------------------------------------------

def test_explain_in_the_service_equals_korllama_explain(client, run_dir, tmp_path):
    from korllama.explain import explain_run

    data = unlabelled_csv(tmp_path / "rows.csv", rows=6)
    row = pd.read_csv(data, dtype=str, keep_default_na=False).iloc[2].to_dict()
    explain_run(Run.load(run_dir), data, tmp_path / "why", ids=[row["ID"]])
    offline = pd.read_csv(tmp_path / "why" / "reasons.csv")
    answer = client.post("/v1/grade", params={"explain": "true", "top": len(offline)}, json=row)
    assert answer.status_code == 200, answer.text
    reasons = answer.json()["reasons"]
    assert [r["field"] for r in reasons] == offline["field"].tolist()  # the same fields in the same order
    np.testing.assert_allclose([r["delta"] for r in reasons], offline["delta"], atol=1e-5)
    assert answer.json()["grade"] == offline["label"].iloc[0]
    assert all(r["text"] for r in reasons)
    plain = client.post("/v1/grade", json=row).json()
    assert "reasons" not in plain or plain["reasons"] is None  # only when asked
    np.testing.assert_allclose(list(plain["probabilities"].values()),
                               list(answer.json()["probabilities"].values()), atol=1e-6)
    assert client.post("/v1/grade", params={"explain": "true", "top": 0}, json=row).status_code == 422


def test_the_service_applies_the_decision_rule_when_asked(run_dir):
    from korllama.decision import DecisionRule
    from korllama.layout import RunDir

    rule = DecisionRule.load(RunDir(run_dir).decision)
    rows = raw_applicants(12)
    with TestClient(create_app(Run.load(run_dir), decision="macro-f1"), base_url="http://localhost") as ruled:
        answers = ruled.post("/v1/grade", json=rows).json()
        assert ruled.get("/health").json()["decision"] == "macro-f1"
    proba = np.array([[a["probabilities"][c] for c in CLASSES] for a in answers])
    assert [a["grade"] for a in answers] == list(rule.apply(proba))
    assert {a["decision"] for a in answers} == {"macro-f1"}
    with pytest.raises(KorllamaError, match="--decision must be one of"):
        create_app(Run.load(run_dir), decision="best")


def test_health_says_when_the_served_run_was_trained_again(run_dir, tmp_path):
    """`train --overwrite` or `--resume` under a running service: it keeps the weights it loaded, and says so."""
    import shutil

    from korllama.run import Run

    run = shutil.copytree(run_dir, tmp_path / "run")
    with TestClient(create_app(Run.load(run)), base_url="http://localhost") as served:
        assert served.get("/health").json()["stale"] is False
        record = run / "weights.json"
        record.write_text(record.read_text("utf-8").replace("{", "{ ", 1), "utf-8")  # what a new training rewrites
        health = served.get("/health").json()
        assert health["stale"] is True and "restart it" in health["notice"]
