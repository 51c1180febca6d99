"""Same command, same model (issue 31): the thread count is a setting or the cores, never the machine's load, so a
training run twice gives byte-identical weights and a prediction run twice the same file, whether or not another
job keeps a core busy; the run records the threads it used."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fixtures import run_config, unlabelled_csv

from korllama.config import RunConfig
from korllama.layout import RunDir
from korllama.training import hardware, train


@contextmanager
def busy_core():
    """Another job keeping one core loaded (what made korllama pick fewer threads before issue 31)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def weights_bytes(run: Path) -> dict[str, bytes]:
    folder = RunDir(run)
    files = [p for w in (folder.model, folder.adapter) for p in sorted(w.glob("*.safetensors"))]
    assert files, f"no weights in {run}"
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in files}


def test_threads_are_the_setting_or_the_cores_never_the_load(monkeypatch):
    import builtins

    real_open = builtins.open

    def guarded(path, *args, **kwargs):  # the old count read the runnable tasks of /proc/loadavg
        if str(path) == "/proc/loadavg":
            raise AssertionError("the thread count must not read the machine's load")
        return real_open(path, *args, **kwargs)

    def no_load(*_a, **_k):
        raise AssertionError("the thread count must not read the machine's load")

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(hardware.os, "getloadavg", no_load, raising=False)
    cores = hardware.cpu_cores()
    with busy_core():
        assert hardware.cpu_threads() == min(torch.get_num_threads(), cores)
        assert hardware.cpu_threads(3) == 3  # train.threads: the user's number, whatever the machine
        assert hardware.cpu_threads(None, processes=cores * 2) == 1
    before = torch.get_num_threads()
    with hardware.threads_for(torch.device("cpu"), requested=before + 1) as used:
        assert used == before + 1 and torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before  # restored after


def test_the_thread_count_is_a_validated_recorded_setting():
    assert RunConfig().train.threads is None
    with pytest.raises(Exception, match="threads"):
        RunConfig.model_validate({"train": {"threads": 0}})


def _train_tiny(out: Path) -> dict:
    config = run_config(name="same", data={"synth_rows": 160}, train={"max_steps": 4, "eval_steps": 4,
                                                                     "save_steps": 4, "threads": 2})
    return train(RunConfig.model_validate(config), out)


def test_the_same_training_twice_gives_identical_weights_even_beside_a_busy_job(tmp_path, cli):
    quiet = _train_tiny(tmp_path / "quiet")
    with busy_core():
        loaded = _train_tiny(tmp_path / "loaded")
    assert quiet["threads"] == loaded["threads"] == 2  # recorded in train_summary.json
    assert json.loads((tmp_path / "quiet" / "train_summary.json").read_text())["threads"] == 2
    assert weights_bytes(tmp_path / "quiet") == weights_bytes(tmp_path / "loaded")

    data = unlabelled_csv(tmp_path / "test.csv")
    outs = []
    for i, run in enumerate(("quiet", "loaded")):
        out = tmp_path / f"pred-{i}.csv"
        code, _, err = cli("predict", tmp_path / run, "--data", data, "--out", out, "--proba")
        assert code == 0, err
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_a_few_smollm2_lora_steps_twice_give_identical_adapters(cache_env, tmp_path):
    config = run_config(name="smol-same", data={"synth_rows": 120},
                        model={"base": "smollm2-135m", "device": "cpu"},
                        lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
                        train={"max_steps": 2, "batch_size": 2, "eval_steps": 2, "save_steps": 2, "eval_rows": 10,
                               "eval_batch_size": 10, "lr": 2e-3, "threads": 2, "max_length": 96})
    config["model"].pop("tiny", None)
    first = train(RunConfig.model_validate(config), tmp_path / "a")
    with busy_core():
        second = train(RunConfig.model_validate(config), tmp_path / "b")
    assert first["threads"] == second["threads"] == 2
    assert weights_bytes(tmp_path / "a") == weights_bytes(tmp_path / "b")
