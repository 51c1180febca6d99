"""`korllama serve` against a fuzzer nobody here wrote: schemathesis reads the service's own /openapi.json and sends
what it generates from it, with every check on (no 5xx, documented status codes, content types and headers,
answers that match their schema, schema-invalid requests refused, schema-valid requests accepted, ...).

The service is real: `korllama serve` on the shared tiny run (tests/conftest.py), on a free loopback port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import schemathesis
from fixtures import free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from korllama.serve.errors import MAX_TEXT
from korllama.serve.schema import raw_pattern
from korllama.spec import load_spec, parse_column

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(run_dir, tmp_path_factory):
    """The base URL of `korllama serve RUN` in a subprocess, stopped after the module."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "KORLLAMA_TOKEN"} | {
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "korllama", "serve", str(run_dir), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_url(f"{service}/openapi.json")


def excused(case, response) -> list:
    """The checks a refusal that is right as it is may skip, for this case alone: the positive-data check, when
    (1) the applicants' IDs repeat (IDs are unique within a request; JSON Schema has no 'unique by one property')
    and the service says just that, or (2) a prompt is longer than the run's limit in tokens (it depends on the
    run's tokenizer and max_length, over all fields together: no per-field schema can state it)."""
    if response.status_code != 422:
        return []
    detail = response.json()["detail"]
    kinds, said = {d["type"] for d in detail}, " ".join(d["msg"] for d in detail)
    if kinds == {"prompt_too_long"}:
        return [positive_data_acceptance]
    ids = [str(a["id"]).strip() for a in case.body if isinstance(a, dict) and a.get("id") is not None] \
        if isinstance(case.body, list) else []
    if len(set(ids)) < len(ids) and kinds == {"value_error"} and "duplicate ID" in said:
        return [positive_data_acceptance]
    return []


if __name__ == "_schemathesis_hooks":  # loaded by the fuzzer (SCHEMATHESIS_HOOKS), not by pytest
    @schemathesis.check
    def positive_data_acceptance_unless_excused(ctx, response, case):
        """schemathesis' positive-data check, but for the exclusions in `excused`."""
        return None if excused(case, response) else positive_data_acceptance(ctx, response, case)


def test_the_service_passes_the_fuzzer_with_every_check(service, tmp_path):
    """Every phase (examples, coverage, fuzzing) and every check; the positive-data check through the wrapper above.
    Derandomized and bounded (max examples per phase), so the run is the same each time."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{service}/openapi.json", "--checks", "all",
               "--exclude-checks", "positive_data_acceptance", "--max-examples", "15", "--generation-deterministic",
               "--continue-on-failure", "--workers", "1", "--no-color", "--report", "junit",
               "--report-junit-path", str(tmp_path / "junit.xml")]
    # this korllama, and tests/ (this file, loaded as the hooks, imports the tests' helpers)
    env = dict(os.environ, SCHEMATHESIS_HOOKS=__file__, NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "No issues found" in out, out[-6000:]
    cases = int(re.search(r"(\d+) generated", out).group(1))
    assert cases > 50, out[-3000:]  # it did send requests (the count is the same each run: derandomized)


@pytest.mark.parametrize("column", [c.alias for c in load_spec().columns])
def test_every_raw_form_the_schema_allows_is_one_the_parser_accepts(column):
    """The schema's string pattern for a column (pydantic enforces it) admits only strings clean reads as allowed."""
    col = load_spec().column(column)
    pattern = raw_pattern(col)

    @settings(max_examples=60, derandomize=True, deadline=None)
    @given(st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) <= MAX_TEXT))
    def accepted(raw):
        assert re.search(pattern, raw)  # as JSON Schema and pydantic read it: a search, anchored by ^ and $
        _, missing, bad = parse_column(pd.Series([raw], dtype=object), col)
        assert not bad.iloc[0] and (col.nullable or not missing.iloc[0]), raw
    accepted()
