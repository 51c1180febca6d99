"""Shared fixtures: the quirky fixture table (tests/fixtures.py), the CLI runner and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import loan_prompts, logits, make_run, write_table

from korllama.cli import main

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


@pytest.fixture(scope="session")
def tested_run(tmp_path_factory) -> Path:
    """The same tiny run with 10% of its rows kept aside as test rows (data.test_fraction 0.1, the default)."""
    return make_run(tmp_path_factory.mktemp("tiny-tested") / "run", test_fraction=0.1)


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


SMOLLM2 = "smollm2-135m"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(cache root, base folder, {prompt: GGUF-loaded logits}) after one real conversion of SmolLM2 in a fresh
    KORLLAMA_CACHE (tests/test_bases.py checks it; the demo's test uses the same cache: one conversion a session).
    The cache starts with what a killed conversion leaves, so the conversion is also a rebuild of a broken entry."""
    import korllama.bases as bases

    cache = tmp_path_factory.mktemp("korllama-cache")
    broken = cache / "bases" / SMOLLM2  # a conversion killed while its folder was copied in: no korllama_base.json
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}", "utf-8")
    (broken / "model.safetensors").write_bytes(bytes(1000))
    stale = cache / "bases" / f".{SMOLLM2}.build-killed"  # a build folder left by a killed conversion
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    prompts = loan_prompts(2)[0] + loan_prompts(1, "seed")[0]
    seen: dict = {}
    real_verify = bases._verify

    def verify_and_keep(gguf_model, gguf_tokenizer, folder):
        seen.update(zip(prompts, logits(gguf_model, gguf_tokenizer, prompts)))
        return real_verify(gguf_model, gguf_tokenizer, folder)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KORLLAMA_CACHE", str(cache))
        mp.setattr(bases, "_verify", verify_and_keep)
        before = bases.conversions
        folder = Path(bases.resolve_base(SMOLLM2))
        assert bases.conversions == before + 1
    return cache, folder, seen


@pytest.fixture
def cache_env(smollm2, monkeypatch):
    """KORLLAMA_CACHE set to the session's converted cache; the SmolLM2 folder."""
    monkeypatch.setenv("KORLLAMA_CACHE", str(smollm2[0]))
    return smollm2[1]
