"""Bad inputs a hostile pass found (issue 20, the runs / weights / data half): each is one sentence, or said in
words, never a traceback; a user's value is quoted at most ~80 characters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
from fixtures import RUN_ROWS

from korllama.errors import quote
from korllama.synth import synthesize

# --- evaluate: a decision rule fitted on every scored row (item 2) ---------------------------------------------


def _rule_fitted_on_every_row(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    data = tmp_path / "data.csv"
    synthesize(RUN_ROWS, 0).to_csv(data, index=False)  # the run's own table: --held-out accepts it
    rule = json.loads((run / "decision.json").read_text("utf-8"))
    rule["fitted_ids"] = pd.read_csv(data)["ID"].tolist()  # as a demo-config run, whose rule took every valid row
    (run / "decision.json").write_text(json.dumps(rule), "utf-8")
    return run, data


def test_evaluate_says_when_no_row_is_left_to_judge_the_rule(run_dir, tmp_path, cli):
    run, data = _rule_fitted_on_every_row(run_dir, tmp_path)
    for extra in (["--held-out"], ["--limit", "5"]):
        out = tmp_path / f"eval{len(extra)}"
        code, stdout, err = cli("evaluate", run, "--data", data, *extra, "--out", out)
        assert code == 0, err
        assert "none is left to judge it" in stdout, stdout
        assert json.loads((out / "metrics.json").read_text())["decision"]["rows"] == 0


def test_evaluate_with_the_rule_refuses_when_every_row_fitted_it(run_dir, tmp_path, cli):
    run, data = _rule_fitted_on_every_row(run_dir, tmp_path)
    code, _, err = cli("evaluate", run, "--data", data, "--held-out", "--decision", "macro-f1", "--out",
                       tmp_path / "e")
    assert code == 2 and "never judged on those" in err, err
    assert not (tmp_path / "e").exists()


# --- a value quoted in an error, and CSV fields of any size (item 6) ------------------------------------------------


def test_quote_keeps_a_value_short():
    assert quote("abc") == "'abc'"
    long = quote("x" * 1_000_000)
    assert len(long) < 100 and "1,000,000 characters" in long
    assert "309 characters" in quote(str(10 ** 308))


def _huge_field(tmp_path, column="대출목적", rows=60):
    frame = synthesize(rows, 0)
    frame[column] = frame[column].astype(object)
    frame.loc[3, column] = "y" * 1_000_000  # a megabyte in one cell
    path = tmp_path / "huge.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_megabyte_field_is_one_short_sentence_in_data_check(tmp_path, cli):
    code, _, err = cli("data", "check", _huge_field(tmp_path))
    assert code == 2 and "Traceback" not in err and "field larger" not in err, err[:300]
    assert "line 5, column 대출목적" in err and "1,000,000 characters" in err
    assert len(err) < 1000


def test_a_megabyte_field_is_one_short_sentence_in_predict(run_dir, tmp_path, cli):
    code, _, err = cli("predict", run_dir, "--data", _huge_field(tmp_path), "--out", tmp_path / "s.csv")
    assert code == 2 and "1,000,000 characters" in err and len(err) < 1000, err[:300]


def test_a_megabyte_field_is_one_short_sentence_in_train(tmp_path, cli):
    code, _, err = cli("train", "--config", "demo", "--data", _huge_field(tmp_path, rows=200), "--out",
                       tmp_path / "run")
    assert code == 2 and "1,000,000 characters" in err and len(err) < 1000, err[:300]
    assert not (tmp_path / "run").exists()


def test_a_huge_number_is_quoted_short(tmp_path, cli):
    frame = synthesize(60, 0)
    frame["대출기간"] = frame["대출기간"].astype(object)
    frame.loc[2, "대출기간"] = str(10 ** 308)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    code, _, err = cli("data", "check", path)
    assert code == 2 and "309 characters" in err and len(err) < 600, err


# --- config (low) ------------------------------------------------------------------------------------------------


def test_max_steps_is_minus_one_or_at_least_one(cli, tmp_path):
    for bad in ("-5", "0"):
        code, _, err = cli("train", "--config", "demo", f"train.max_steps={bad}", "--out", tmp_path / "r")
        assert code == 2 and "max_steps" in err, err


# --- baseline on a table too small for the trees' inner split (item 8) -------------------------------------------


def test_baseline_on_a_tiny_table_is_one_sentence(tmp_path, cli):
    data = tmp_path / "s50.csv"
    synthesize(50, 0).to_csv(data, index=False)
    code, _, err = cli("baseline", "--train", data, "--out", tmp_path / "O", "--budget", "1")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "split 35/5 for training and test" in err and "--test-fraction 0" in err  # the test rows first
    assert not (tmp_path / "O").exists()
    code, _, err = cli("baseline", "--train", data, "--out", tmp_path / "O", "--budget", "1", "--test-fraction", "0")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "early stopping" in err and "needs at least" in err
    assert not (tmp_path / "O").exists()


# --- the korllama cache where none can be (item 7); lora-info without converting (item 15) ---------------------


def test_an_impossible_cache_is_one_sentence(tmp_path, cli, monkeypatch, loan_csv):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for cache in ("/proc/x", str(a_file)):
        monkeypatch.setenv("KORLLAMA_CACHE", cache)
        code, _, err = cli("predict", "--base", "smollm2-135m", "--data", loan_csv, "--out", tmp_path / "s.csv")
        assert code == 2 and "Traceback" not in err and "set KORLLAMA_CACHE" in err, err
        assert len(err.strip().splitlines()) == 1


def test_lora_info_counts_a_named_base_without_converting_it(tmp_path, cli, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("KORLLAMA_CACHE", str(cache))
    code, out, err = cli("lora-info", "--config", "smollm2-lora")
    assert code == 0, err
    trainable, total = (int(part.split(": ")[1]) for part in out.split(" | ")[:2])
    assert total - trainable == 134_515_008  # SmolLM2-135M, as its converted folder counts (test_bases)
    assert not any(cache.iterdir()), "lora-info wrote into the cache"
    monkeypatch.setenv("KORLLAMA_CACHE", "/proc/x")  # it does not need a cache at all
    assert cli("lora-info", "--config", "smollm2-lora")[1] == out


# --- a template with a format code Python cannot use (item 18) ---------------------------------------------------

STUDENTS = Path(__file__).resolve().parents[1] / "examples" / "students"


def test_a_bad_format_code_is_refused_when_the_spec_is_read(tmp_path, cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text((STUDENTS / "spec.yaml").read_text("utf-8").replace("{final:.0f}.", "{final:.0q}."), "utf-8")
    code, out, err = cli("prompt", STUDENTS / "students.csv", "--schema", spec, "--id", "S001", "-t", "rubric")
    assert code == 2 and "Traceback" not in err and out == "", err
    assert "template 'rubric': {final:.0q} has a format code Python cannot use" in err
    code, _, err = cli("templates", "--schema", spec)
    assert code == 2 and "{final:.0q}" in err


# --- a run holds its own spec (item 17) -----------------------------------------------------------------------------

HIRING = Path(__file__).resolve().parents[1] / "examples" / "hiring"


def test_a_run_scores_with_its_own_copy_of_a_relative_spec(tmp_path, cli, monkeypatch):
    trained_in, elsewhere, run = tmp_path / "a", tmp_path / "b", tmp_path / "run"
    (trained_in / "ex").mkdir(parents=True)
    spec_text = (HIRING / "spec.yaml").read_text("utf-8")
    start = spec_text.index("    text: |-", spec_text.index("templates:"))
    # the template in a file beside the spec, as a spec may have it
    (trained_in / "ex" / "ko.txt").write_text(
        "\n".join(line[6:] for line in spec_text[start:].splitlines()[1:]), "utf-8")
    (trained_in / "ex" / "spec.yaml").write_text(spec_text[:start] + "    file: ko.txt\n", "utf-8")
    data = tmp_path / "hiring.csv"
    data.write_text("\n".join((HIRING / "hiring.csv").read_text("utf-8").splitlines()[:201]) + "\n", "utf-8")
    monkeypatch.chdir(trained_in)
    code, _, err = cli("train", "--config", HIRING / "config.yaml", "data.spec=ex/spec.yaml", f"data.train={data}",
                       "prompt.template=ko", "train.max_steps=2", "train.eval_steps=2", "train.save_steps=2",
                       "train.eval_rows=10", "--out", run)
    assert code == 0, err
    assert "file:" not in (run / "spec.yaml").read_text("utf-8")  # one file: the template inlined

    (elsewhere / "ex").mkdir(parents=True)  # another spec at the same relative path: other labels
    (elsewhere / "ex" / "spec.yaml").write_text(spec_text.replace("[우수, 보통, 미흡]", "[good, fair, poor]"), "utf-8")
    monkeypatch.chdir(elsewhere)
    code, out, err = cli("predict", run, "--data", data, "--out", elsewhere / "s.csv")
    assert code == 0, err
    assert set(pd.read_csv(elsewhere / "s.csv")["평가"]) <= {"우수", "보통", "미흡"}
    (elsewhere / "ex" / "spec.yaml").unlink()  # and with none there at all
    assert cli("predict", run, "--data", data, "--out", elsewhere / "s2.csv")[0] == 0


# --- a prompt longer than the model reads: refused everywhere, as by the service (item 14) ----------------------


def test_a_too_long_prompt_is_refused_by_every_command_that_scores(run_dir, tmp_path, cli):
    frame = synthesize(60, 0)
    frame["총상환원금"] = frame["총상환원금"].astype(object)
    frame.loc[4, "총상환원금"] = "1e308"  # 309 digits in the prompt
    data = tmp_path / "long.csv"
    frame.to_csv(data, index=False)
    for command, out in (("predict", tmp_path / "s.csv"), ("evaluate", tmp_path / "e"), ("explain", tmp_path / "x")):
        code, _, err = cli(command, run_dir, "--data", data, "--out", out)
        assert code == 2 and "Traceback" not in err, err
        assert "ID 'SYN_00004': its prompt is" in err and "more than this run's limit of" in err, err
        assert not out.exists() or not any(out.iterdir())


def test_principal_repaid_above_the_loan_amount_is_warned(tmp_path, cli):
    frame = synthesize(60, 0)
    frame["총상환원금"] = frame["총상환원금"].astype(object)
    frame.loc[4, "총상환원금"] = str(int(frame.loc[4, "대출금액"]) * 2)
    data = tmp_path / "over.csv"
    frame.to_csv(data, index=False)
    code, _, err = cli("data", "check", data)
    assert code == 0 and "line 6, column 총상환원금: 1 row above 대출금액" in err, err
