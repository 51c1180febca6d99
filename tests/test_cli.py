"""The `korllama` command: good files pass (exit 0), each bad case is one sentence on stderr (exit 2), no traceback."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from fixtures import (
    BAD_CASES,
    HEADER,
    README_TEST_00000,
    TEST_00000,
    quirky_frame,
    strip_lines,
    write_bad,
    write_table,
    write_variants,
)

from korllama.data import read_table
from korllama.errors import DataError


@pytest.mark.parametrize("form", ["utf-8", "utf-8-sig", "cp949", "parquet", "english"])
def test_data_check_accepts_good_files(tmp_path, cli, form):
    path = write_variants(tmp_path)[form]
    code, out, err = cli("data", "check", path)
    assert code == 0, err
    assert f"{path.name}: 60 rows, valid for spec loan" in out
    assert "implied_rate" in out and "error" not in err


def test_data_check_with_explicit_schema_and_json(loan_csv, cli):
    code, out, err = cli("data", "check", loan_csv, "--schema", "loan", "--json")
    assert code == 0, err
    assert '"rows": 60' in out and '"labels"' in out


@pytest.mark.parametrize("case", BAD_CASES)
def test_data_check_rejects_each_bad_case(tmp_path, cli, case):
    path, expected = write_bad(tmp_path, case)
    before = sorted(tmp_path.iterdir())
    code, out, err = cli("data", "check", path)
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    assert err.startswith("error: ")
    message = " ".join(err.split())  # one sentence, whatever the terminal width
    for piece in expected:
        assert " ".join(piece.split()) in message, (piece, err)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_error_text_is_not_read_as_markup(tmp_path, cli):
    frame = quirky_frame()
    frame.loc[2, "근로기간"] = "[/x]"
    code, _, err = cli("data", "check", write_table(tmp_path, frame=frame))
    assert code == 2 and "'[/x]'" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, cli):
    path, _ = write_bad(tmp_path, "bad_term")
    with pytest.raises(DataError, match="line 9, column 대출기간"):
        cli("--debug", "data", "check", path)


def test_real_entry_point_exit_code_and_no_traceback(tmp_path):
    path, _ = write_bad(tmp_path, "not_a_number")
    run = subprocess.run([sys.executable, "-m", "korllama", "data", "check", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "'abc'" in run.stderr
    debug = subprocess.run([sys.executable, "-m", "korllama", "--debug", "data", "check", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_synth_writes_a_file_that_check_accepts(tmp_path, cli):
    out = tmp_path / "syn" / "synthetic.csv"
    code, stdout, err = cli("data", "synth", "--rows", 300, "--seed", 5, "--out", out)
    assert code == 0, err
    assert out.exists() and "300 rows" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["synthetic.csv"]  # no temp file left
    assert len(pd.read_csv(out)) == 300
    code, stdout, err = cli("data", "check", out)
    assert code == 0, err
    assert "300 rows" in stdout
    assert read_table(out).labels.isin(list("ABCDEFG")).all()


def test_synth_is_deterministic_for_a_seed(tmp_path, cli):
    paths = [tmp_path / name for name in ("a.csv", "b.csv", "c.csv")]
    for path, seed in zip(paths, (11, 11, 12), strict=True):
        assert cli("data", "synth", "--rows", 200, "--seed", seed, "--out", path)[0] == 0
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b and a != c


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_failed_synth_leaves_nothing_behind(tmp_path, cli, where):
    folder = tmp_path / "out"
    folder.mkdir()
    (tmp_path / "file.txt").write_text("x")
    target = folder if where == "folder" else tmp_path / "file.txt" / "x.csv"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = cli("data", "synth", "--rows", 10, "--out", target)
    assert code == 2 and "Traceback" not in err and "Could not write" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_failed_write_in_synth_removes_the_partial_file(tmp_path, cli, monkeypatch):
    def write_half_then_fail(self, path, *args, **kwargs):
        open(path, "w").write("ID,대출금액\nSYN_00000,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_half_then_fail)
    out = tmp_path / "synthetic.csv"
    code, _, err = cli("data", "synth", "--rows", 10, "--out", out)
    assert code == 2 and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_two(tmp_path, cli):
    code, _, err = cli("data", "synth", "--rows", 0, "--out", tmp_path / "x.csv")
    assert code == 2 and "--rows" in err
    assert not (tmp_path / "x.csv").exists()
    assert cli("data", "check")[0] == 2  # FILE is required


def test_version_and_templates(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("korllama ")
    code, out, _ = cli("templates")
    assert code == 0
    for name in ("compact", "seed", "seed-clear", "ko"):
        assert name in out


def test_prompt_prints_the_seed_prompt(tmp_path, cli):
    path = tmp_path / "test.csv"
    path.write_text(f"{HEADER}\n{TEST_00000}\n", "utf-8")
    code, out, err = cli("prompt", path, "--id", "TEST_00000", "--template", "seed")
    assert code == 0, err
    assert strip_lines(out) == strip_lines(README_TEST_00000)


def test_prompt_on_a_labelled_row_appends_the_answer(loan_csv, cli):
    code, out, _ = cli("prompt", loan_csv, "--id", "SYN_00020", "-t", "compact")
    assert code == 0
    assert out.rstrip("\n").endswith("grade: A")


def test_prompt_errors(tmp_path, loan_csv, cli):
    code, _, err = cli("prompt", loan_csv, "--id", "NOPE", "--template", "seed")
    assert code == 2 and "'NOPE'" in err and "SYN_00000" in err
    code, _, err = cli("prompt", loan_csv, "--id", "SYN_00000", "--template", "fancy")
    assert code == 2 and "'fancy'" in err and "seed-clear" in err and "Traceback" not in err
