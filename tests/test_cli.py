"""The `korllama` command: good files pass (exit 0), each bad case is one sentence on stderr (exit 2), no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert code == 2 and "Traceback" not in err
    assert ("is a folder; it must name a file" if where == "folder" else "file.txt is a file, not a folder") in err
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


@pytest.mark.parametrize("args", [
    ["data", "synth", "--rows", "0", "--out", "x.csv"],
    ["explain", "RUN", "--data", "t.csv", "--out", "why", "--top", "0"],
    ["evaluate", "RUN", "--data", "t.csv", "--out", "e", "--limit", "0"],
    ["predict", "RUN", "--data", "t.csv", "--decision", "best"],
    ["evaluate", "RUN", "--data", "t.csv", "--out", "e", "--mode", "sample"],
    ["data", "check"],
    ["train", "--no-such-option"],
])
def test_a_usage_error_is_one_sentence_like_every_other_error(tmp_path, cli, args):
    """click's refusals (a bad value, a missing argument, an unknown option) in korllama's one-line form, not typer's
    box: what is wrong and which --help to read; exit 2; nothing written."""
    code, out, err = cli(*[str(tmp_path / a) if a in ("x.csv", "why", "e", "t.csv", "RUN") else a for a in args])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "╭" not in err and "Traceback" not in err and "--help`" in err
    assert list(tmp_path.iterdir()) == []


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


# --- output paths, before any work -------------------------------------------------------------------------------

def _bad_outs(tmp_path):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file.csv").write_text("x")
    return {"unwritable": Path("/proc/korllama-x"), "folder": tmp_path / "a_folder",
            "file": tmp_path / "a_file.csv", "under_a_file": tmp_path / "a_file.csv" / "x"}


# each command with the kinds of --out it must refuse: predict/compare write a file, the others a folder
BAD_OUTS = [(command, kind) for command in ("predict", "evaluate", "baseline", "compare", "demo")
            for kind in ("unwritable", "under_a_file", "folder" if command in ("predict", "compare") else "file")]


@pytest.mark.parametrize(("command", "kind"), BAD_OUTS)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, cli, command, kind):
    out = _bad_outs(tmp_path)[kind]
    if kind == "unwritable" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    missing = tmp_path / "no-such-thing"  # the work would fail on it: the --out check comes first
    args = {"predict": ["predict", missing, "--data", missing, "--out", out],
            "evaluate": ["evaluate", missing, "--data", missing, "--out", out],
            "baseline": ["baseline", "--train", missing, "--out", out],
            "compare": ["compare", missing, "--out", out],
            "demo": ["demo", "--out", out]}[command]
    before = sorted(tmp_path.rglob("*"))
    code, stdout, err = cli(*args)
    assert code == 2, err
    assert err.startswith(f"error: --out {out}") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before and stdout == ""


def test_compare_into_a_folder_writes_no_plots(tmp_path, cli):
    from korllama.evaluation import metrics, write_evaluation

    for name in ("a", "b"):
        write_evaluation(tmp_path / name, metrics(list("AB"), list("AB"), list("AB")), ["1", "2"], list("AB"),
                         list("AB"), None, list("AB"))
    (tmp_path / "report").mkdir()
    code, _, err = cli("compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "report")
    assert code == 2 and "is a folder; it must name a file" in err
    assert list((tmp_path / "report").iterdir()) == []  # the PNGs used to land here before the error
    (tmp_path / "r.png").write_text("x")  # where the plots folder of r.png.html once went: left alone now
    code, _, err = cli("compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "r.png.html")
    assert code == 0 and (tmp_path / "r.png").read_text() == "x" and (tmp_path / "r.png.html").is_file()


# --- lora-info -----------------------------------------------------------------------------------------------------

def test_lora_info_on_the_tiny_base_says_what_to_set(cli):
    code, out, err = cli("lora-info", "--config", "demo")
    assert code == 2 and out == ""
    message = " ".join(err.split())
    assert "model.base is 'tiny'" in message and "model.architecture" in message and "llama-2-ko-7b" in message
    assert "smollm2-135m" in message  # a named base is one way out
    code, out, err = cli("lora-info", "--config", "demo", "model.architecture=llama-2-ko-7b", "lora.r=8")
    assert code == 0, err
    assert out == "Trainable: 4194304 | total: 6860050432 | Percentage: 0.0611%\n"


def test_lora_info_reads_a_local_base_folder(tmp_path, cli):
    import json

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 500, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, out, err = cli("lora-info", "--config", "demo", f"model.base={tmp_path}", "lora.r=4")
    assert code == 0, err
    assert out.startswith("Trainable: 2048 | total: ")  # 2 layers x (q, v) x 4 x (64 + 64)
    code, _, err = cli("lora-info", "--config", "demo", "model.base=someone/some-model")
    assert code == 2 and "'someone/some-model', not a local model folder" in " ".join(err.split())


# --- Ctrl-C and piped output ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_ctrl_c_says_nothing_was_written(tmp_path, cli, monkeypatch, command, run_dir):
    import korllama.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(korllama.run, "load_run_weights", interrupted)
    data = write_table(tmp_path)
    out = tmp_path / "out" / ("submission.csv" if command == "predict" else "eval")
    code, stdout, err = cli(command, run_dir, "--data", data, "--out", out)  # Ctrl-C while the weights load
    assert code == 130
    assert err.strip() == "interrupted; nothing written" and stdout == ""
    assert not (tmp_path / "out").exists()


def test_ctrl_c_after_a_file_was_written_names_it(tmp_path, cli, monkeypatch):
    import korllama.decision

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    assert cli("data", "synth", "--rows", "300", "--out", tmp_path / "t.csv")[0] == 0
    monkeypatch.setattr(korllama.decision.DecisionRule, "save", interrupted)  # after the evaluation's two files
    code, _, err = cli("baseline", "--train", tmp_path / "t.csv", "--budget", "0", "--out", tmp_path / "b")
    assert code == 130
    last = " ".join(err.split()).split(" interrupted; ")[-1]  # after the search's progress lines
    assert last.startswith(f"already written: {tmp_path / 'b' / 'metrics.json'}, {tmp_path / 'b' / 'predictions.csv'}")
    assert last.endswith("(nothing else)") and str(tmp_path / "b" / "trees" / "part-0.txt") in last
    assert "trees.json" not in last  # written last: an interrupted baseline is no system a command would take


def test_output_to_a_file_or_pipe_is_not_wrapped(tmp_path, cli):
    out = tmp_path / ("a-rather-long-folder-name-" * 3) / "and-another-one-to-pass-eighty-columns" / "table.csv"
    code, stdout, err = cli("data", "synth", "--rows", 20, "--out", out)
    assert code == 0, err
    assert stdout == f"wrote {out} (20 rows, seed 0)\n"  # one line, the path whole (not cut at 80 columns)
    frame = quirky_frame().drop(columns=["대출등급"])
    frame.loc[3, "대출목적"] = "결혼"  # a purpose never seen in training: a long warning on stderr
    code, _, err = cli("data", "check", write_table(tmp_path, frame=frame))
    assert code == 0
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and warning[0].endswith("treated as 'other'.") and len(warning[0]) > 80


@pytest.mark.parametrize("rows,grades", [(1, "A"), (3, "ABC")])
def test_train_on_a_table_too_small_to_split_is_one_sentence(tmp_path, cli, rows, grades):
    frame = quirky_frame().head(rows).copy()
    frame["대출등급"] = list(grades)
    data = write_table(tmp_path, "small.csv", frame=frame)
    code, _, err = cli("train", "--config", "demo", "--data", data, "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert f"small.csv has {rows} labelled row" in err and "cannot hold a row of each label" in err
    assert not (tmp_path / "run").exists()


# --- the commands' help texts -----------------------------------------------------------------------------------------

def all_commands() -> list[list[str]]:
    from korllama.cli.app import app, data_app

    return [[c.name] for c in app.registered_commands] + [["data", c.name] for c in data_app.registered_commands]


def description(cli, monkeypatch, command: list[str], columns: int) -> list[str]:
    """The lines of `korllama COMMAND --help` between its usage line and its first box, as rich wrote them at
    `columns` (its one-space margin and the trailing spaces taken off)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = cli(*command, "--help")
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if "Usage:" in x)
    end = next(i for i, x in enumerate(lines) if x.startswith("╭"))
    return [x.rstrip()[1:] for x in lines[start + 1:end]]


@pytest.mark.parametrize("columns", [100, 140])
def test_help_paragraphs_are_wrapped_by_rich_not_broken_mid_sentence(cli, monkeypatch, columns):
    """A prose line of a description ends where rich wrapped it: the next word would not have fitted (a docstring's
    own line breaks would end lines early, ragged). Examples (indented lines) keep their lines."""
    from rich.cells import cell_len

    commands = all_commands()
    assert len(commands) >= 14  # every command is checked, the data subcommands too
    for command in commands:
        paragraphs = "\n".join(description(cli, monkeypatch, command, columns)).strip().split("\n\n")
        assert paragraphs and paragraphs[0], command
        for paragraph in paragraphs:
            lines = paragraph.split("\n")
            if any(x[:1].isspace() for x in lines):  # an example block
                continue
            for line, after in zip(lines, lines[1:], strict=False):
                room = columns - 2 - cell_len(line)  # the text is as wide as the terminal less the two margins
                assert cell_len(after.split()[0]) + 1 > room, \
                    f"`korllama {' '.join(command)} --help` at {columns} columns breaks a line early:\n{line}\n{after}"


def test_help_examples_keep_one_line_each(cli, monkeypatch):
    """Every indented line of a command's docstring (an example, a line of output) is one line of its help at 140
    columns, and no prose line of the docstring is (they are joined into paragraphs)."""
    import inspect

    from korllama.cli.app import app, data_app, help_paragraphs

    infos = {(c.name,): c for c in app.registered_commands} | {("data", c.name): c for c in
                                                                data_app.registered_commands}
    examples = 0
    for command, info in infos.items():
        lines = description(cli, monkeypatch, list(command), 140)
        shown, out = [x.strip() for x in lines], [f" {x}" for x in lines]
        doc = inspect.getdoc(info.callback)
        for line in doc.splitlines():
            if line[:1].isspace():
                examples += 1
                assert line.strip() in shown, (command, line)
                assert f" {line}" in out, (command, line)  # its indent kept (after rich's one-space margin)
        assert help_paragraphs(doc) == info.help
    assert examples >= 15
    assert help_paragraphs("One\nsentence.\n\nTwo\nlines of it.\n\nExample:\n  a b\n  c d") == \
        "One sentence.\n\nTwo lines of it.\n\nExample:\n[b][/b]  a b\n[b][/b]  c d"
