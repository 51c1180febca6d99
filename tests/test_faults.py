"""Faults are sentences and inputs are hygienic (issue 29 items 8 and 9): a full disk or a refused permission is one
sentence and nothing partial; SIGTERM is Ctrl-C for every command; a damaged checkpoint on --resume names itself;
headers and categories typed on macOS (NFD) read as typed elsewhere; empty or control-character IDs, a format as
wide as memory, a YAML object tag are refused in one line; weights follow the user's umask."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures import quirky_frame, run_config, subprocess_env, unlabelled_csv, write_table

from korllama.errors import ConfigError, DataError


def one_sentence(err: str, *expected: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(e in lines[0] for e in expected), lines[0]
    return lines[0]


def test_a_full_disk_under_predict_is_one_sentence_and_nothing_partial(cli, run_dir, tmp_path, monkeypatch):
    data = unlabelled_csv(tmp_path / "t.csv")
    out = tmp_path / "out" / "s.csv"
    out.parent.mkdir()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out.parent / ".s.csv.x.tmp"))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, _, err = cli("predict", run_dir, "--data", data, "--out", out)
    assert code == 2
    one_sentence(err, "the disk is full", "nothing partial")
    assert list(out.parent.iterdir()) == []


def test_a_full_disk_inside_safetensors_is_one_sentence(cli, run_dir, tmp_path, monkeypatch):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    def full(*args, **kwargs):  # what safetensors raises on ENOSPC
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    code, _, err = cli("export", run_dir, "--out", tmp_path / "ex")
    assert code == 2
    one_sentence(err, "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no export, no staging folder


def test_a_read_only_cache_is_one_sentence(cli, tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root writes anywhere: refuse the lock file the way a read-only mount would
        import filelock

        def refused(self, *args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "bases" / "x.lock"))

        monkeypatch.setattr(filelock.BaseFileLock, "acquire", refused)
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases").chmod(0o555)
    monkeypatch.setenv("KORLLAMA_CACHE", str(tmp_path))
    code, _, err = cli("evaluate", "--base", "smollm2-135m", "--data", write_table(tmp_path), "--out",
                       tmp_path / "ev")
    assert code == 2
    one_sentence(err, "permission denied")


def _terminate_after(args: list[str], started: Path, cwd: Path) -> tuple[int, str]:
    """Run korllama, SIGTERM it once `started` exists (its work has begun), return (exit code, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "korllama", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


@pytest.mark.slow
def test_sigterm_of_synth_leaves_no_temporary_file(tmp_path):
    class Started:  # a lock file: the command has claimed its output and is at work
        def exists(self):
            return any(p.name.startswith(".korllama-lock-") for p in tmp_path.iterdir())

    code, output = _terminate_after(["data", "synth", "--rows", "3000000", "--out", "big.csv"], Started(), tmp_path)
    assert code == 143 and "terminated" in output, output
    assert list(tmp_path.iterdir()) == []  # no temporary file, no lock


@pytest.mark.slow
def test_sigterm_of_train_before_its_first_checkpoint_leaves_nothing(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(run_config(train={"max_steps": 3000, "eval_steps": 3000,
                                                       "save_steps": 3000})), "utf-8")
    code, output = _terminate_after(["train", "--config", str(config), "--out", "run"], tmp_path / "run" / "base",
                                    tmp_path)
    assert code == 143 and "terminated" in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_damaged_checkpoint_on_resume_is_one_sentence_naming_it(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(run_config(train={"max_steps": 2, "eval_steps": 2, "save_steps": 2})), "utf-8")
    run = tmp_path / "run"
    assert cli("train", "--config", config, "--out", run)[0] == 0
    (run / "train_summary.json").unlink()  # as if killed after its checkpoint
    optimizer = run / "checkpoints" / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    code, _, err = cli("train", "--out", run, "--resume")
    assert code == 2
    one_sentence(err, "optimizer.pt is damaged", "checkpoint-2")
    assert "weights_only" not in err


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_headers_and_categories_typed_on_macos_read_the_same(tmp_path):
    from korllama.data import read_table

    frame = quirky_frame()
    composed = read_table(write_table(tmp_path, "nfc.csv", frame))
    decomposed = frame.rename(columns=nfd).map(lambda v: nfd(v) if isinstance(v, str) else v)
    assert list(decomposed.columns) != list(frame.columns)  # the headers really are other code points
    read = read_table(write_table(tmp_path, "nfd.csv", decomposed))
    pd.testing.assert_frame_equal(read.frame, composed.frame)


@pytest.mark.parametrize("bad_id, said", [("", "is empty"), ("A\nB", "control or direction"),
                                          ("\u202eDI", "control or direction")])
def test_an_empty_or_invisible_id_is_refused(tmp_path, bad_id, said):
    from korllama.data import read_table

    frame = quirky_frame()
    frame.loc[3, "ID"] = bad_id
    with pytest.raises(DataError, match=said):
        read_table(write_table(tmp_path, frame=frame))


def test_a_format_as_wide_as_memory_is_refused_at_once(tmp_path):
    from korllama.spec import load_spec

    spec = yaml.safe_load(Path("korllama/specs/loan.yaml").read_text("utf-8"))
    spec["columns"][0]["format"] = ">3000000000.2%"
    spec.pop("templates", None)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), "utf-8")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="at most 64"):
        load_spec(path)
    assert time.perf_counter() - started < 5  # refused before Python builds the 3 GB string


def test_a_yaml_object_tag_is_refused_in_one_line(tmp_path):
    from korllama.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text('model: !!python/object/apply:os.system ["touch pwned"]\n', "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "\n" not in str(caught.value) and "line 1" in str(caught.value)
    assert not (tmp_path / "pwned").exists()


def test_weights_follow_the_users_umask(run_dir):
    umask = os.umask(0)
    os.umask(umask)
    for path in (run_dir / "model").glob("*.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
