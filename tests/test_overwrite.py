"""--overwrite replaces only what korllama wrote, and only after the new work succeeded; one writer per output; an
input is never an output; a killed command's leftovers are korllama's own (issue 29 item 7, the hostile pass's
file cases)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from fixtures import run_config, subprocess_env, unlabelled_csv

from korllama.outputs import MANIFEST


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), "utf-8")
    return path


def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "c.yaml", run_config(train={"max_steps": 2, "eval_steps": 2, "save_steps": 2}))


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_overwrite_with_a_bad_table_leaves_the_old_run_whole(cli, tmp_path):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert cli("train", "--config", config, "--out", run)[0] == 0
    before = snapshot(run)
    unlabelled = unlabelled_csv(tmp_path / "t.csv")
    code, _, err = cli("train", "--config", config, "--out", run, "--overwrite", f"data.train={unlabelled}")
    assert code == 2 and "graded rows" in err and "Traceback" not in err
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_train_overwrite_replaces_the_run_only_when_the_new_one_finished(cli, tmp_path):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert cli("train", "--config", config, "--out", run)[0] == 0
    old = (run / "train_summary.json").read_text()
    code, _, err = cli("train", "--config", config, "--out", run, "--overwrite", "train.seed=1")
    assert code == 0, err
    assert (run / "train_summary.json").read_text() != old and (run / "model_card.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert ".korllama-overwrite" not in (run / "model_card.md").read_text("utf-8")
    code, _, err = cli("predict", run, "--data", unlabelled_csv(tmp_path / "u.csv"), "--out", tmp_path / "s.csv")
    assert code == 0, err


def test_train_overwrite_never_deletes_a_users_file_in_the_run(cli, tmp_path):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert cli("train", "--config", config, "--out", run)[0] == 0
    (run / "analysis.R").write_text("my work")
    code, _, err = cli("train", "--config", config, "--out", run, "--overwrite")
    assert code == 2 and "did not write (analysis.R" in err
    assert (run / "analysis.R").read_text() == "my work" and (run / "train_summary.json").is_file()


def test_demo_overwrite_refuses_a_folder_with_the_users_files(cli, tmp_path):
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "data.csv").write_text("ID,x\n1,2\n")  # the user's own data, under a name the demo writes
    (out / "run" / "analysis.R").write_text("my work")
    (out / "report.html").write_text("<p>mine</p>")
    before = snapshot(out)
    code, _, err = cli("demo", "--out", out, "--overwrite")
    assert code == 2 and "did not write" in err and MANIFEST in err
    assert snapshot(out) == before


def test_a_manifest_lists_what_was_written_and_only_that_is_replaced(cli, run_dir, loan_csv, tmp_path):
    out = tmp_path / "ev"
    assert cli("evaluate", run_dir, "--data", loan_csv, "--out", out, "--limit", "10")[0] == 0
    import json

    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert listed == ["metrics.json", "predictions.csv"]
    (out / "notes.txt").write_text("mine")  # beside the evaluation, never replaced: kept
    assert cli("evaluate", run_dir, "--data", loan_csv, "--out", out, "--limit", "10", "--overwrite")[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    (out / MANIFEST).unlink()  # nothing proves korllama wrote metrics.json now: not replaced
    code, _, err = cli("evaluate", run_dir, "--data", loan_csv, "--out", out, "--limit", "10", "--overwrite")
    assert code == 2 and "did not write (metrics.json" in err


def test_the_input_file_is_never_the_output(cli, run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "t.csv")
    before = data.read_bytes()
    code, _, err = cli("predict", run_dir, "--data", data, "--out", data, "--overwrite")
    assert code == 2 and "is the input file" in err
    assert data.read_bytes() == before
    link = tmp_path / "same.csv"
    link.symlink_to(data)
    code, _, err = cli("predict", run_dir, "--data", link, "--out", data, "--overwrite")
    assert code == 2 and "is the input file" in err


def test_a_second_writer_of_the_same_output_is_one_sentence(cli, run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "t.csv")
    out = tmp_path / "s.csv"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from korllama import outputs
        outputs.locking["on"] = True
        outputs.claim_file(Path({str(out)!r}))
        print("held", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli("predict", run_dir, "--data", data, "--out", out)
        assert code == 2 and "being written by another korllama command" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = cli("predict", run_dir, "--data", data, "--out", out)  # the holder is gone: its lock too
    assert code == 0, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".korllama-lock-")]


def test_a_killed_commands_leftovers_are_cleaned_by_the_next(cli, run_dir, loan_csv, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    for name in (".metrics.json.k3j2h1x_.tmp", ".predictions.csv.a8b7c6d5.tmp"):  # what kill -9 of evaluate leaves
        (out / name).write_text("half")
    (out / ".draft.tmp").write_text("the user's own hidden file")  # not korllama's: never deleted
    code, _, err = cli("evaluate", run_dir, "--data", loan_csv, "--out", out, "--limit", "10")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, ".draft.tmp", "metrics.json", "predictions.csv"])
