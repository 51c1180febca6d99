"""Every command that reads a run refuses a damaged one the same way (issue 20): a flipped byte in its weights, a
truncated weight file, a missing config.yaml, an unfinished run -> exit 2, one sentence, no traceback, nothing
written. The commands are discovered from the CLI itself: one whose first argument is a run folder (named `run`)
and that is missing from CALLS fails the test, so a new command cannot be left out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer

from korllama.cli import app

# how to call each command that takes a run; {data} is a labelled table, {out} a path that must stay absent
CALLS = {
    "predict": ["--data", "{data}", "--out", "{out}"],
    "evaluate": ["--data", "{data}", "--out", "{out}"],
    "explain": ["--data", "{data}", "--out", "{out}", "--limit", "3"],
    "export": ["--out", "{out}"],
    "serve": ["--port", "1"],  # refused before it listens
}


def run_commands() -> list[str]:
    """The names of the CLI's commands (sub-commands included) whose first argument is a run folder."""
    found = []

    def walk(command, prefix):
        if hasattr(command, "commands"):  # a group (typer bundles its own click: duck-typed)
            for name, sub in command.commands.items():
                walk(sub, [*prefix, name])
            return
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        if arguments and arguments[0].name == "run":
            found.append(" ".join(prefix))

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_that_reads_a_run_is_in_the_table():
    assert set(run_commands()) == set(CALLS), "add the new command's call to CALLS"


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped byte": (lambda run: flip_byte(run / "model" / "model.safetensors"), "model.safetensors"),
    "truncated weights": (lambda run: truncate(run / "model" / "model.safetensors"), "model.safetensors"),
    "flipped byte in base": (lambda run: flip_byte(run / "base" / "model.safetensors"), "base/model.safetensors"),
    "missing config": (lambda run: (run / "config.yaml").unlink(), "config.yaml"),
    "unfinished": (lambda run: (run / "train_summary.json").unlink(), "--resume"),
    # a run folder someone sends you is data, never code (issue 29)
    "remote code switched on": (lambda run: remote_code_config(run), "trust_remote_code must be false"),
    "auto_map": (lambda run: add_auto_map(run / "model" / "config.json"), "custom code (auto_map)"),
    "a python file": (lambda run: plant_code(run / "model" / "evil_model.py"), "evil_model.py is code"),
    "no checksum record": (lambda run: (run / "weights.json").unlink(), "--allow-unrecorded"),
}

MARKER = "KORLLAMA_EVIL_RAN"


def plant_code(path: Path) -> None:
    """Code that, if anything imported it, would leave a file beside itself."""
    path.write_text(f"import pathlib\npathlib.Path(__file__).with_name({MARKER!r}).write_text('ran')\n")


def add_auto_map(path: Path) -> None:
    import json

    config = json.loads(path.read_text("utf-8"))
    config["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilForCausalLM"}
    path.write_text(json.dumps(config), "utf-8")


def remote_code_config(run: Path) -> None:
    text = (run / "config.yaml").read_text("utf-8")
    assert "trust_remote_code: false" in text
    (run / "config.yaml").write_text(text.replace("trust_remote_code: false", "trust_remote_code: true"), "utf-8")


def refuses(cli, args, out: Path, expected: str, warned: int = 0):
    code, stdout, err = cli(*args)
    assert code == 2, (code, stdout, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 + warned, err
    err = err.strip().splitlines()[-1]
    assert err.startswith("error:") and expected in err, err
    assert not out.exists(), f"{out} was written"
    return err


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", list(CALLS))
def test_a_damaged_run_is_refused_by_every_command(command, damage, run_dir, loan_csv, tmp_path, cli):
    run = shutil.copytree(run_dir, tmp_path / "run")
    harm, expected = DAMAGE[damage]
    harm(run)
    out = tmp_path / "out"
    args = [a.format(data=loan_csv, out=out) for a in CALLS[command]]
    refuses(cli, [command, run, *args], out, expected)


@pytest.mark.parametrize("command", list(CALLS))
def test_a_run_carrying_code_never_runs_it(command, run_dir, loan_csv, tmp_path, cli):
    """The hostile pass's run folder: remote code switched on, auto_map to a .py of its own, no checksum record.
    Every command refuses it in one sentence, and the code never ran."""
    run = shutil.copytree(run_dir, tmp_path / "run")
    plant_code(run / "model" / "evil_model.py")
    add_auto_map(run / "model" / "config.json")
    (run / "weights.json").unlink()
    out = tmp_path / "out"
    refuses(cli, [command, run, *[a.format(data=loan_csv, out=out) for a in CALLS[command]], "--allow-unrecorded"],
            out, "never runs code from a run folder")
    assert not (run / "model" / MARKER).exists()


def test_a_truncated_file_unrecorded_is_one_sentence(run_dir, loan_csv, tmp_path, cli, recwarn):
    """A run without a checksum record (an older korllama's) still refuses a truncated file in one sentence,
    instead of safetensors' traceback."""
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "weights.json").unlink()
    truncate(run / "model" / "model.safetensors")
    out = tmp_path / "out.csv"
    err = refuses(cli, ["predict", run, "--data", loan_csv, "--out", out, "--allow-unrecorded"], out, "safetensors",
                  warned=1)
    assert "cannot be read" in err


def test_an_unrecorded_run_is_refused_unless_allowed_then_loads_with_a_warning(run_dir, loan_csv, tmp_path, cli):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "weights.json").unlink()
    code, _, err = cli("predict", run, "--data", loan_csv, "--out", tmp_path / "s.csv")
    assert code == 2 and "records no checksums" in err and "--allow-unrecorded" in err
    assert not (tmp_path / "s.csv").exists()
    code, _, err = cli("predict", run, "--data", loan_csv, "--out", tmp_path / "s.csv", "--allow-unrecorded")
    assert code == 0 and "records no checksums" in err


def test_an_unfinished_run_is_used_with_allow_unfinished(run_dir, loan_csv, tmp_path, cli):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "train_summary.json").unlink()
    code, _, err = cli("predict", run, "--data", loan_csv, "--out", tmp_path / "s.csv", "--allow-unfinished")
    assert code == 0, err
    assert (tmp_path / "s.csv").is_file()


def test_a_file_added_to_the_weights_is_refused(run_dir, loan_csv, tmp_path, cli):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "model" / "extra.safetensors").write_bytes(b"x")
    refuses(cli, ["predict", run, "--data", loan_csv, "--out", tmp_path / "s.csv"], tmp_path / "s.csv",
            "extra.safetensors was not written by the run's training")


def test_resume_verifies_the_weights(run_dir, tmp_path, cli):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "train_summary.json").unlink()  # killed before it finished: resume continues it (a finished run is refused)
    flip_byte(run / "checkpoints" / "checkpoint-4" / "model.safetensors")
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    code, _, err = cli("train", "--out", run, "--resume")
    assert code == 2 and "checkpoint-4/model.safetensors is not the file the run wrote" in err, err
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_non_finite_probabilities_never_leave_scoring(run_dir):
    import torch

    from korllama.errors import KorllamaError
    from korllama.run import Run
    from korllama.scoring import score

    run = Run.load(run_dir)
    model = run.model
    with torch.no_grad():
        saved = model.model.norm.weight.clone()
        model.model.norm.weight.fill_(float("nan"))
        try:
            with pytest.raises(KorllamaError, match="not finite"):
                score(model, run.tokenizer, ["a: 1\ngrade:"], run.classes)
        finally:
            model.model.norm.weight.copy_(saved)
