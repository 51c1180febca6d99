"""RunDir (korllama.layout): the one owner of a run directory's layout, and what a fresh training may write into;
the spec a Run (korllama.run) reads."""

from __future__ import annotations

import json

import pytest

from korllama.config import load_config
from korllama.errors import KorllamaError
from korllama.layout import RunDir
from korllama.run import Run


def test_the_layout_is_spelled_once(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config == tmp_path / "r" / "config.yaml"
    assert run.weights(lora=True) == run.adapter != run.weights(lora=False) == run.model
    assert run.checkpoint(12) == run.checkpoints / "checkpoint-12"
    assert not run.is_run and not run.finished


def test_a_fresh_training_goes_only_into_a_new_or_empty_folder(tmp_path):
    RunDir(tmp_path / "new").check_new()  # does not exist: fine
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").check_new()

    (tmp_path / "file").write_text("x")
    with pytest.raises(KorllamaError, match="is a file"):
        RunDir(tmp_path / "file").check_new()

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff")
    with pytest.raises(KorllamaError, match="not a korllama run"):
        RunDir(foreign).check_new()

    killed = RunDir(tmp_path / "killed")
    killed.checkpoint(5).mkdir(parents=True)
    killed.config.write_text("name: x\n")
    with pytest.raises(KorllamaError, match="unfinished run.*--resume.*--overwrite"):
        killed.check_new()

    killed.summary.write_text("{}")
    with pytest.raises(KorllamaError, match="finished run.*--overwrite"):
        killed.check_new()


def test_the_newest_complete_checkpoint_is_chosen(tmp_path):
    run = RunDir(tmp_path)
    for step, whole in ((5, True), (10, True), (15, False)):  # 15: killed while saving
        run.checkpoint(step).mkdir(parents=True)
        (run.checkpoint(step) / "trainer_state.json").write_text(json.dumps({"step": step}) if whole else '{"ste')
    assert run.last_complete_checkpoint() == run.checkpoint(10)
    assert RunDir(tmp_path / "none").last_complete_checkpoint() is None


def test_require_run_says_the_way_out(tmp_path):
    with pytest.raises(KorllamaError, match="no config.yaml"):
        RunDir(tmp_path).require_run()


def test_a_run_reads_and_names_its_own_spec_copy(run_dir, tmp_path):
    run = Run.load(run_dir)
    assert run.spec_source == str((run_dir / "spec.yaml").resolve())  # what metrics.json records
    bare = Run(load_config(run_dir / "config.yaml"))  # no folder: the configured spec
    assert bare.spec_source == str(bare.config.data.spec)
