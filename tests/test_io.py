"""Tests for korllama.io: atomic writes, JSON without NaN, and output paths refused before any work."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from korllama import io
from korllama.errors import KorllamaError
from korllama.io import atomic_path, json_text, write_json
from korllama.outputs import claim_dir, claim_file


def tree(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


# --- atomic writes ----------------------------------------------------------------------------------------------

def test_atomic_path_removes_temp_file_when_body_raises(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a file")
            assert tmp.exists() and tmp.parent == tmp_path
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_atomic_path_on_ctrl_c_leaves_the_old_file_and_records_only_whole_files(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    io.written.clear()
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    assert io.written == []
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert io.written == [target]


# --- JSON -------------------------------------------------------------------------------------------------------

def test_json_has_null_for_nan_and_infinity():
    obj = {"qwk": float("nan"), "ece": np.float64("inf"), "per_class": {"A": {"f1": -np.inf, "n": 3}},
           "confidence": [0.5, float("nan"), None], "pair": (1.0, np.nan), "name": "NaN"}
    text = json_text(obj)

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    assert json.loads(text, parse_constant=refuse) == {
        "qwk": None, "ece": None, "per_class": {"A": {"f1": None, "n": 3}}, "confidence": [0.5, None, None],
        "pair": [1.0, None], "name": "NaN"}
    assert obj["qwk"] != obj["qwk"]  # the caller's object is not changed


def test_write_json_is_atomic_and_valid(tmp_path):
    write_json(tmp_path / "m.json", {"x": float("nan"), "y": "한국어"})
    assert json.loads((tmp_path / "m.json").read_text("utf-8")) == {"x": None, "y": "한국어"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# --- output paths -----------------------------------------------------------------------------------------------

def claim_evaluation(path, overwrite=False, option="--out"):
    names = ("metrics.json", "predictions.csv")
    return claim_dir(path, overwrite, owns=names, writes=names, what="an evaluation", option=option)


@pytest.fixture
def place(tmp_path) -> Path:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.csv").write_text("x")
    return tmp_path


@pytest.mark.parametrize("check,rel,piece", [
    (claim_file, "folder", "is a folder; it must name a file"),
    (claim_file, "file.csv/out.csv", "file.csv is a file, not a folder"),
    (claim_file, "file.csv/deeper/out.csv", "file.csv is a file, not a folder"),
    (claim_evaluation, "file.csv", "is a file; it must name a folder"),
    (claim_evaluation, "file.csv/eval", "file.csv is a file, not a folder"),
])
def test_wrong_kind_of_output_is_refused_and_nothing_is_made(place, check, rel, piece):
    before = tree(place)
    with pytest.raises(KorllamaError, match=piece) as info:
        check(place / rel)
    assert str(info.value).startswith(f"--out {place / rel}") and "\n" not in str(info.value)
    assert tree(place) == before


@pytest.mark.parametrize("check", [claim_file, claim_evaluation])
def test_a_place_that_takes_no_files_is_found_by_trying(check):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    assert os.access("/proc", os.W_OK) or os.geteuid() != 0  # as root, asking would say yes: trying says no
    with pytest.raises(KorllamaError, match=r"--out /proc/x cannot be written: /proc takes no new files"):
        check("/proc/x")


@pytest.mark.parametrize("check", [claim_file, claim_evaluation])
def test_a_refused_trial_file_is_a_sentence(place, monkeypatch, check):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(KorllamaError, match=rf"cannot be written: {place} takes no new files \(Permission denied\)"):
        check(place / "new" / "out.csv", option="--out")


def test_good_outputs_pass_and_leave_nothing(place):
    before = tree(place)
    assert claim_file(place / "file.csv", overwrite=True) == place / "file.csv"  # replaced atomically later
    assert claim_file(place / "new" / "deeper" / "out.csv") == place / "new" / "deeper" / "out.csv"
    assert claim_file(Path("relative.csv")) == Path("relative.csv")
    assert claim_evaluation(place / "folder") == place / "folder"
    assert claim_evaluation(place / "new" / "eval") == place / "new" / "eval"
    assert tree(place) == before  # no folder made, no trial file left


def test_a_folder_where_an_output_file_goes_is_refused(place):
    (place / "folder" / "metrics.json").mkdir()
    with pytest.raises(KorllamaError, match=r"metrics\.json is a folder, so metrics\.json cannot be written"):
        claim_evaluation(place / "folder", overwrite=True)
