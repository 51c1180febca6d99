"""The analysts' page of `korllama serve` (korllama.serve.page): first its routes in-process (TestClient), then the page
itself in a real browser (Debian's chromium through selenium, marked `browser`) against real `korllama serve`
subprocesses on free loopback ports: one applicant graded and read from the DOM (focus taken to it, only reasons that
change the grade, a derived field's headers), a bad value's sentence at its field, a tree baseline's run panel,
a 200-row file graded and downloaded (the same labels as `korllama predict`), a bad file's sentence, the token flow,
the hiring example's Korean headers and labels, phone width. A screenshot of each state is saved in
$KORLLAMA_SCREENSHOTS (default: a pytest temporary folder).

The browser tests skip, saying so, only when chromium or chromedriver is not installed
(`apt-get install -y chromium chromium-driver`; `.ci/run` installs them). Nothing is downloaded: selenium is given
the system's chromedriver and chromium, so Selenium Manager never runs.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from fixtures import free_port, run_config, unlabelled_csv

import korllama.serve.page as page
from korllama.run import Run
from korllama.serve import create_app
from korllama.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
HIRING = REPO / "examples" / "hiring"
SPEC = load_spec()
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver"


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(Run.load(run_dir)), base_url="http://localhost") as c:
        yield c


def upload(client, path: Path, **params) -> str:
    """The page's upload: the file as the raw body, its name in the query; the job's id."""
    r = client.post("/page/jobs", params={"name": path.name, **params}, content=path.read_bytes(),
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def wait_job(client, job_id: str, headers: dict | None = None) -> dict:
    for _ in range(600):
        state = client.get(f"/page/jobs/{job_id}", headers=headers).json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {state}")


# --- the routes, in-process ----------------------------------------------------------------------------------------

def test_the_page_holds_the_form_of_the_spec(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for col in SPEC.columns:  # every header as the table names it (Korean), in the form's description
        assert f'"name": "{col.name}"' in r.text
    assert '"max_upload_bytes": 67108864' in r.text and '"auth": false' in r.text
    assert client.get("/page/static/page.js").status_code == 200
    assert "/page/jobs" not in client.get("/openapi.json").text  # the API's docs stay about the API


def test_form_fields_follow_the_spec():
    by_name = {c["name"]: c for c in page.form_info(SPEC, "argmax", False, 10)["columns"]}
    amount = by_name["대출금액"]
    assert amount["kind"] == "number" and amount["min"] == 0 and amount["max"] is None and amount["step"] == 1
    assert by_name["대출금액"]["hint"] == "loan_amount · loan amount (KRW) · ≥ 0"
    assert [o["value"] for o in by_name["대출기간"]["options"]] == ["36", "60"]
    assert {"value": "부채 통합", "text": "부채 통합 (debt consolidation)"} in by_name["대출목적"]["options"]
    assert by_name["근로기간"]["required"] is False and by_name["연간소득"]["required"] is True
    hiring = {c["name"]: c for c in page.form_info(load_spec(HIRING / "spec.yaml"), "argmax", False, 10)["columns"]}
    assert {"value": "학사", "text": "학사 (bachelor)"} in hiring["학력"]["options"]
    assert hiring["필기점수"]["hint"] == "written · 필기 시험 점수 · ≥ 0 · ≤ 100"


def test_run_info_and_its_example_rows_grade(client, run_dir):
    run = client.get("/page/run").json()
    assert run["base"] == "tiny" and run["run"] == run_dir.name and run["split"]["seed"] == 3
    assert run["split"]["train_rows"] == 160 and run["decision"]["served"] == "argmax"
    assert "<h1>Model card: tiny</h1>" in run["card_html"] and "<table>" in run["card_html"]
    assert len(run["examples"]) == page.EXAMPLE_ROWS
    r = client.post("/v1/grade", json=run["examples"])  # the rows the page fills the form with are valid applicants
    assert r.status_code == 200 and [x["id"] for x in r.json()] == [e["ID"] for e in run["examples"]]


def test_card_html_keeps_no_markup_of_its_own(tmp_path):
    card = tmp_path / "model_card.md"
    card.write_text("# 카드\n\n<script>alert(1)</script> [x](javascript:alert(1)) | a |\n", "utf-8")
    html = page.card_html(card)
    assert "<h1>카드</h1>" in html and "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="javascript' not in html


def test_derived_fields_say_which_headers_they_are_computed_from(client):
    derived = page.derived_info(SPEC)
    four = ["대출금액", "대출기간", "총상환원금", "총상환이자"]
    assert derived["implied_rate"] == {"text": "implied annual interest rate", "from": four}
    assert derived["payments_made"]["from"] == four  # through implied_rate, each header once
    assert derived["principal_ratio"]["from"] == ["총상환원금", "대출금액"]
    assert set(derived) == {d.alias for d in SPEC.derived}
    assert '"payments_made": {"text": "monthly payments' in client.get("/").text  # in the page's form data


@pytest.fixture(scope="module")
def folder_base_run(run_dir, tmp_path_factory) -> Path:
    """A run whose base model is a folder given by its absolute path (the tiny run's base/): 2 steps."""
    from korllama.card import document_run
    from korllama.config import RunConfig
    from korllama.training import train

    config = run_config(name="from-folder", model={"base": str(run_dir / "base"), "device": "cpu"},
                        data={"synth_rows": 200, "split_seed": 3}, train={"max_steps": 2, "eval_steps": 2,
                                                                            "save_steps": 2})
    config["model"].pop("tiny")
    folder = tmp_path_factory.mktemp("from-folder") / "run"
    train(RunConfig.model_validate(config), folder)
    document_run(Run.load(folder), on_error="raise")
    return folder


def make_trees(folder: Path) -> Path:
    """`korllama baseline --budget 0` (the first setting only) on 300 synthetic rows: a served tree folder."""
    from korllama.cli.app import main
    from korllama.synth import synthesize

    data = folder / "train.csv"
    synthesize(300, seed=2).to_csv(data, index=False)
    assert main(["baseline", "--train", str(data), "--out", str(folder / "trees"), "--budget", "0"]) == 0
    return folder / "trees"


@pytest.fixture(scope="module")
def trees_dir(tmp_path_factory) -> Path:
    return make_trees(tmp_path_factory.mktemp("trees"))


def test_the_run_panel_names_no_path_of_the_server(folder_base_run, trees_dir):
    from korllama.system import load_system

    base = folder_base_run.parent.parent  # the pytest folder both runs lie in
    with TestClient(create_app(Run.load(folder_base_run)), base_url="http://localhost") as c:
        panel = c.get("/page/run")
    assert panel.status_code == 200 and str(base) not in panel.text and str(folder_base_run) not in panel.text
    info = panel.json()
    assert info["kind"] == "llm" and info["base"] == "base" and info["provenance"] == {"name": "base"}
    assert "<code>base</code>" in info["card_html"]  # the card names the base folder, by its name
    with TestClient(create_app(load_system(trees_dir)), base_url="http://localhost") as c:
        panel = c.get("/page/run")
    assert panel.status_code == 200 and str(trees_dir.parent) not in panel.text
    assert panel.json()["kind"] == "trees" and panel.json()["data"]["source"] == "train.csv"


def test_a_local_path_is_told_from_a_name(tmp_path):
    assert page.public_name(str(tmp_path / "bases" / "mine")) == "mine"
    assert page.public_name("./bases/mine") == "mine" and page.public_name("~/mine") == "mine"
    for name in ("tiny", "smollm2-135m", "HuggingFaceTB/SmolLM2-135M", 0.25, None):
        assert page.public_name(name) == name


def test_a_file_job_grades_as_korllama_predict(client, run_dir, tmp_path, cli):
    data = unlabelled_csv(tmp_path / "신청.csv", rows=30)
    state = wait_job(client, upload(client, data, proba="false"))
    assert state["status"] == "done" and state["done"] == state["total"] == state["rows"] == 30
    graded = client.get(f"/page/jobs/{state['id']}/file")
    assert "%EC%8B%A0%EC%B2%AD-graded.csv" in graded.headers["content-disposition"]  # 신청-graded.csv
    code, _, _ = cli("predict", run_dir, "--data", data, "--out", tmp_path / "cli.csv")
    assert code == 0 and graded.text == (tmp_path / "cli.csv").read_text("utf-8")


def test_a_parquet_file_is_graded_too(client, tmp_path):
    data = tmp_path / "applicants.parquet"
    pd.read_csv(unlabelled_csv(tmp_path / "applicants.csv", rows=12), dtype=str).to_parquet(data, index=False)
    state = wait_job(client, upload(client, data))
    assert state["status"] == "done" and state["rows"] == sum(state["counts"].values()) == 12
    graded = pd.read_csv(io.StringIO(client.get(f"/page/jobs/{state['id']}/file").text))
    assert list(graded.columns) == ["ID", "대출등급", *(f"P_{c}" for c in "ABCDEFG")] and len(graded) == 12


def test_a_bad_file_gets_the_clis_sentence(client, run_dir, tmp_path, cli):
    bad = tmp_path / "bad.csv"
    bad.write_text(unlabelled_csv(tmp_path / "ok.csv").read_text("utf-8").replace(",", ";"), "utf-8")
    state = wait_job(client, upload(client, bad))
    code, _, err = cli("predict", run_dir, "--data", bad, "--out", tmp_path / "out.csv")
    assert code == 2 and state["status"] == "failed"
    assert state["error"] == err.strip().removeprefix("error: ") and state["error"].startswith("bad.csv: ")
    assert client.get(f"/page/jobs/{state['id']}/file").status_code == 409


def test_uploads_over_the_limit_are_refused_and_the_token_is_required(run_dir, monkeypatch):
    monkeypatch.setattr(page, "MAX_UPLOAD_BYTES", 1000)
    monkeypatch.setenv("KORLLAMA_TOKEN", "s3cret")
    with TestClient(create_app(Run.load(run_dir)), base_url="http://localhost") as c:
        assert c.get("/").status_code == 200 and '"auth": true' in c.get("/").text  # the page itself is public
        for path in ("/page/run", "/page/jobs/x"):
            assert c.get(path).status_code == 401
        assert c.post("/page/jobs", content=b"x").status_code == 401
        auth = {"Authorization": "Bearer s3cret", "content-type": "application/octet-stream"}
        r = c.post("/page/jobs", content=b"x" * 1001, headers=auth)
        assert r.status_code == 413 and r.json()["detail"].startswith("the file is larger than 1,000 bytes")
        assert c.get("/page/jobs/nope", headers=auth).status_code == 404
        r = c.post("/page/jobs", content=b"ID\n1\n", headers=auth | {"content-type": "text/plain"})
        assert r.status_code == 415 and "application/octet-stream" in r.json()["detail"]  # no other site's form


# --- in a real browser -----------------------------------------------------------------------------------------------


class Server:
    """`korllama serve RUN` in a subprocess on a free loopback port."""

    def __init__(self, run: Path, log: Path, token: str | None = None):
        env = {k: v for k, v in os.environ.items() if k != "KORLLAMA_TOKEN"} | ({"KORLLAMA_TOKEN": token} if token
                                                                                  else {})
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "korllama", "serve", str(run), "--port",
                                         str(self.port)], cwd=REPO, env=env, stdout=log.open("wb"),
                                        stderr=subprocess.STDOUT)

    def wait(self) -> Server:
        for _ in range(1200):
            if self.process.poll() is not None:
                raise AssertionError(f"korllama serve exited: {self.log.read_text('utf-8', 'replace')}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"korllama serve did not start: {self.log.read_text('utf-8', 'replace')}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def make_hiring_run(run_dir: Path) -> Path:
    """The hiring rubric (Korean headers and labels) on the tiny model: 2 steps, enough to serve it."""
    from korllama.config import RunConfig
    from korllama.training import train

    config = run_config(name="hiring", data={"train": str(HIRING / "hiring.csv"), "spec": str(HIRING / "spec.yaml")},
                        prompt={"template": "compact", "fields": ["written", "interview", "rubric_score"]},
                        train={"max_steps": 2, "eval_steps": 2, "save_steps": 2})
    train(RunConfig.model_validate(config), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def servers(run_dir, trees_dir, tmp_path_factory):
    """Four services started together: the loan run, the same with a token, the hiring run, the loan trees."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"the browser tests need chromium and chromedriver, which are not installed: {INSTALL}")
    logs = tmp_path_factory.mktemp("serve-logs")
    plain, token = Server(run_dir, logs / "plain.log"), Server(run_dir, logs / "token.log", token="s3cret")
    hiring = Server(make_hiring_run(tmp_path_factory.mktemp("hiring") / "run"), logs / "hiring.log")
    started = {"plain": plain, "token": token, "hiring": hiring, "trees": Server(trees_dir, logs / "trees.log")}
    try:
        yield {name: server.wait() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("KORLLAMA_SCREENSHOTS") or tmp_path_factory.mktemp("page-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(servers, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--lang=ko-KR"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: condition(d),
                                                                        message=f"waiting for {what}")


def by_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def field(driver, header: str):
    return by_css(driver, f'[data-field="{header}"] input, [data-field="{header}"] select')


def shot(driver, folder: Path, name: str) -> None:
    """The whole page: the window is made as tall as the document first."""
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height + 140, 600), 6000))
    driver.save_screenshot(str(folder / f"{name}.png"))


def open_page(driver, url: str, width: int = 1280) -> None:
    driver.set_window_size(width, 1000)
    driver.get(url + "/")
    wait_for(driver, lambda d: d.execute_script("return document.querySelectorAll('#fields .field').length") > 0,
             "the form")


def grade_example(driver) -> dict:
    """Fill the form with the run's first example row, grade it, and read the answer from the DOM."""
    wait_for(driver, lambda d: by_css(d, "#run-info dl"), "the run panel")
    by_css(driver, "#example-button").click()
    by_css(driver, "#grade-button").click()
    wait_for(driver, lambda d: by_css(d, "#result").is_displayed(), "the grade")
    bars = driver.execute_script(
        "return [...document.querySelectorAll('#bars .bar')].map(b => [b.dataset.label, +b.dataset.probability])")
    return {"grade": by_css(driver, "#grade").text, "bars": dict(bars),
            "reasons": [li.text for li in driver.find_elements("css selector", "#reasons li")],
            "deltas": [float(li.get_attribute("data-delta")) for li in driver.find_elements("css selector",
                                                                                         "#reasons li")],
            "note": by_css(driver, "#reasons-note").text, "decision": by_css(driver, "#decision").text,
            "focus": driver.execute_script("return document.activeElement.id"),
            "in_view": driver.execute_script("const r = document.getElementById('result-title')"
                                             ".getBoundingClientRect(); return r.top >= -1 && r.bottom <= innerHeight"),
            "status": driver.execute_script("return document.getElementById('result-status').textContent")}


def moving_reasons(url: str, example: dict) -> list[dict]:
    """The reasons that change the grade's probability, among every field's (the service's most, 20)."""
    return [r for r in httpx.post(url + "/v1/grade?explain=true&top=20", json=example).json()["reasons"]
            if r["delta"] != 0]


@pytest.mark.browser
def test_browser_grades_one_applicant_and_marks_a_bad_field(browser, servers, shots):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.keys import Keys

    url = servers["plain"].url
    open_page(browser, url)
    assert browser.execute_script(  # every input has a label
        "return [...document.querySelectorAll('input, select')].every(i => i.labels && i.labels.length > 0)")
    assert by_css(browser, '[data-field="대출금액"] label').text == "대출금액"
    shot(browser, shots, "01-loan-form")
    got = grade_example(browser)
    example = httpx.get(url + "/page/run").json()["examples"][0]
    api = httpx.post(url + "/v1/grade", json=example).json()
    assert got["grade"] == api["grade"] and list(got["bars"]) == list("ABCDEFG")
    assert all(abs(got["bars"][k] - p) < 1e-5 for k, p in api["probabilities"].items())  # explain: float32 batches
    assert got["decision"].startswith("Decided by argmax")
    moving = moving_reasons(url, example)  # the tiny run reads few fields: some change nothing
    assert len(got["reasons"]) == min(3, len(moving)) and all(d != 0 for d in got["deltas"])
    assert not any("does not change" in r for r in got["reasons"])
    assert (got["note"] == f"No other field changes the probability of {got['grade']} when it is set to its typical "
            "value.") == (len(moving) < 3)
    assert got["focus"] == "result-title" and got["in_view"]  # the analyst is taken to the answer
    assert got["status"] == f"대출등급 {api['grade']} ({100 * api['probabilities'][api['grade']]:.1f}%)"
    assert "Model card: tiny" in by_css(browser, "#card-html").get_attribute("innerHTML")
    shot(browser, shots, "02-loan-graded")

    amount = field(browser, "대출금액")  # a bad value, sent with Enter from the keyboard
    amount.clear()
    amount.send_keys("-5", Keys.ENTER)
    problem = wait_for(browser, lambda d: (p := by_css(d, '[data-field="대출금액"] .problem')).is_displayed() and p,
                       "the field's sentence")
    expected = httpx.post(url + "/v1/grade?explain=true&top=3", json=example | {"대출금액": "-5"})
    assert expected.status_code == 422 and problem.text == expected.json()["detail"][0]["msg"]
    assert amount.get_attribute("aria-invalid") == "true" and browser.switch_to.active_element == amount
    assert not by_css(browser, "#result").is_displayed()
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    shot(browser, shots, "03-loan-bad-field")

    by_css(browser, "#card summary").click()  # the model card, rendered
    wait_for(browser, lambda d: by_css(d, "#card-html h2").is_displayed(), "the model card")
    browser.execute_script("document.getElementById('run').scrollIntoView()")
    browser.save_screenshot(str(shots / "04-run-and-card.png"))

    open_page(browser, url, width=390)  # phone width: one column, nothing wider than the screen
    got = grade_example(browser)
    assert got["focus"] == "result-title" and got["in_view"]  # far below the form: scrolled to
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot(browser, shots, "05-loan-phone-whole")
    browser.set_window_size(390, 844)
    browser.execute_script("document.getElementById('result').scrollIntoView()")
    browser.save_screenshot(str(shots / "05-loan-phone-result.png"))


@pytest.mark.browser
def test_browser_reasons_say_where_a_derived_field_comes_from(browser, servers, shots):
    """A result with a derived field, a column and a field that changes nothing, shown as the service answers it."""
    open_page(browser, servers["plain"].url)
    reason = {"value": 1, "reference": 1, "deltas": {}}
    browser.execute_script("showResult(arguments[0])", {
        "grade": "C", "decision": "argmax", "probabilities": dict.fromkeys("ABCDEFG", 1 / 7), "reasons": [
            reason | {"field": "term", "delta": 0.2, "text": "term 60 (typical 36) raises C by 0.20"},
            reason | {"field": "loan_amount", "delta": 0.0, "text": "loan_amount 1 (typical) does not change C"},
            reason | {"field": "principal_ratio", "delta": -0.01, "text": "principal_ratio 9% lowers C by 0.01"},
            reason | {"field": "payments_made", "delta": -0.3, "text": "payments_made 7 lowers C by 0.30"}]})
    items = browser.find_elements("css selector", "#reasons li")
    assert [li.get_attribute("data-field") for li in items] == ["term", "payments_made", "principal_ratio"]
    assert items[0].text == "term 60 (typical 36) raises C by 0.20 (대출기간)"
    derived = "payments_made: monthly payments the repaid total amounts to, computed from " + ", ".join(
        ["대출금액", "대출기간", "총상환원금", "총상환이자"])
    assert items[1].text.splitlines() == ["payments_made 7 lowers C by 0.30", derived]
    assert by_css(browser, "#reasons-note").text == ""  # three that move it: nothing to add
    browser.execute_script("showResult(arguments[0])", {
        "grade": "C", "decision": "argmax", "probabilities": dict.fromkeys("ABCDEFG", 1 / 7),
        "reasons": [reason | {"field": "term", "delta": 0.0, "text": "term 36 (typical) does not change C"}]})
    assert browser.find_elements("css selector", "#reasons li") == []
    assert by_css(browser, "#reasons-note").text == ("No field changes the probability of C when it is set to its "
                                                     "typical value.")


@pytest.mark.browser
def test_browser_trees_panel_reads_as_trees(browser, servers, shots):
    url = servers["trees"].url
    open_page(browser, url)
    got = grade_example(browser)
    assert got["grade"] in "ABCDEFG" and got["focus"] == "result-title" and all(d != 0 for d in got["deltas"])
    facts = dict(zip([e.text for e in browser.find_elements("css selector", "#run-info dt")],
                     [e.text for e in browser.find_elements("css selector", "#run-info dd")], strict=True))
    assert by_css(browser, "#run-title").text == "The trees"
    assert list(facts) == ["Folder", "Model", "Tuning", "Data", "Split", "Held out", "Decision"]
    assert facts["Model"] == "trees (LightGBM)" and facts["Split"].endswith("fitted on 210 rows")
    assert facts["Split"].startswith("20.0% validation, 10.0% test rows kept aside")
    held_out = httpx.get(url + "/page/run").json()["metrics"]["macro_f1"]
    assert facts["Held out"] == f"macro-F1 {held_out:.4f} on the test rows"
    text = by_css(browser, "#run").text
    assert not any(bad in text for bad in ("undefined", "null", "prompt template", "/tmp", "?"))
    shot(browser, shots, "12-trees-graded")


@pytest.mark.browser
def test_browser_grades_a_file_and_downloads_it(browser, servers, shots, downloads, run_dir, tmp_path, cli):
    from selenium.common.exceptions import TimeoutException

    open_page(browser, servers["plain"].url)
    assert by_css(browser, "#upload-limit").text == "64 MB"  # said before the upload
    big = unlabelled_csv(tmp_path / "many.csv", rows=4000)  # long enough for a screenshot of the bar, most times
    by_css(browser, "#file-input").send_keys(str(big))
    by_css(browser, "#upload-button").click()
    try:
        wait_for(browser, lambda d: d.execute_script("const bar = document.getElementById('job-progress'); "
                                                      "return bar.hasAttribute('value') && bar.value > 0"),
                 "the progress bar moving", 20)
        browser.execute_script("document.getElementById('file').scrollIntoView()")
        browser.save_screenshot(str(shots / "06-file-progress.png"))
    except TimeoutException:  # graded before the bar was seen: no screenshot of it
        pass
    wait_for(browser, lambda d: "many-graded.csv" in by_css(d, "#download").text, "the first file", 60)

    data = unlabelled_csv(tmp_path / "applicants.csv", rows=200)
    by_css(browser, "#file-input").send_keys(str(data))
    by_css(browser, "#upload-button").click()
    link = wait_for(browser, lambda d: (a := by_css(d, "#download")).is_displayed() and "applicants" in a.text and a,
                    "the download", 60)
    assert "200 rows graded" in by_css(browser, "#job-summary").text
    shot(browser, shots, "07-file-graded")
    link.click()
    graded = downloads / "applicants-graded.csv"
    wait_for(browser, lambda d: graded.is_file() and graded.stat().st_size > 0, "the downloaded file")
    code, _, _ = cli("predict", run_dir, "--data", data, "--out", tmp_path / "cli.csv")
    page_labels, cli_labels = pd.read_csv(graded), pd.read_csv(tmp_path / "cli.csv")
    assert code == 0 and len(page_labels) == 200 and list(page_labels.columns[:2]) == ["ID", "대출등급"]
    assert page_labels[["ID", "대출등급"]].equals(cli_labels[["ID", "대출등급"]])
    assert list(page_labels.columns[2:]) == [f"P_{c}" for c in "ABCDEFG"]

    bad = tmp_path / "semicolons.csv"
    bad.write_text(data.read_text("utf-8").replace(",", ";"), "utf-8")
    by_css(browser, "#file-input").send_keys(str(bad))
    by_css(browser, "#upload-button").click()
    problem = wait_for(browser, lambda d: (p := by_css(d, "#file-problem")).is_displayed() and p, "the sentence")
    _, _, err = cli("predict", run_dir, "--data", bad, "--out", tmp_path / "no.csv")
    assert problem.text == err.strip().removeprefix("error: ")
    shot(browser, shots, "08-file-bad")


@pytest.mark.browser
def test_browser_asks_for_the_token_then_grades(browser, servers, shots):
    open_page(browser, servers["token"].url)
    panel = by_css(browser, "#token-panel")
    assert panel.is_displayed() and "needs a token" in panel.text and "401" not in by_css(browser, "body").text
    shot(browser, shots, "09-token-asked")
    by_css(browser, "#token-input").send_keys("wrong")
    by_css(browser, "#token-form button").click()
    wait_for(browser, lambda d: "not accepted" in by_css(d, "#token-problem").text, "the refusal")
    by_css(browser, "#token-input").send_keys("s3cret")
    by_css(browser, "#token-form button").click()
    wait_for(browser, lambda d: not by_css(d, "#token-panel").is_displayed(), "the token to be taken")
    assert browser.execute_script("return sessionStorage.getItem('korllama-token')") == "s3cret"
    got = grade_example(browser)
    assert got["grade"] in "ABCDEFG" and "401" not in by_css(browser, "body").text
    shot(browser, shots, "10-token-graded")


@pytest.mark.browser
def test_browser_hiring_page_has_its_korean_headers_and_labels(browser, servers, shots):
    open_page(browser, servers["hiring"].url)
    labels = [e.text for e in browser.find_elements("css selector", "#fields label")]
    assert labels[:3] == ["경력년수", "학력", "지원분야"] and labels[-1] == "주간학습시간 (optional)"
    assert "학사 (bachelor)" in [o.text for o in browser.find_elements("css selector", '[data-field="학력"] option')]
    got = grade_example(browser)
    assert list(got["bars"]) == ["우수", "보통", "미흡"] and got["grade"] in got["bars"]
    assert by_css(browser, "#grade-name").text == "평가 (grade)"
    shot(browser, shots, "11-hiring-graded")
