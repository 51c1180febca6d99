"""Shared fixtures: the quirky fixture table (tests/fixtures.py), the CLI runner and the shared data folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures.py is importable as `fixtures`

from fixtures import make_run, write_table  # noqa: E402

from korllama.cli import main  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dacon-loan"
SEED_README = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "Kor_llama-README.md"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run on a 2-core machine, often next to a training job: one thread each is faster and repeatable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained run (full weights, 4 steps on synthetic rows), shared by the predict/evaluate tests."""
    return make_run(tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture
def loan_csv(tmp_path) -> Path:
    """The quirky fixture table as a utf-8 CSV with Korean headers."""
    return write_table(tmp_path)


@pytest.fixture
def cli(capsys):
    """Run `korllama ARGS...` in-process: returns (exit code, stdout, stderr)."""
    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run
