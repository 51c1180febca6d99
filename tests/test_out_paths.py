"""Every command that writes follows one rule for its `--out` (korllama.outputs.claim_file / claim_dir, docs/rules.md).

The commands are found in the CLI itself: each one with an `--out` option is run against every bad kind of path
(a place that takes no new files, a device node, a FIFO, a path under a file, a folder where a file goes and the
other way round, a run, a folder of other files, an existing output without --overwrite) and must refuse it in
one sentence (exit 2, no traceback) before any work, leaving the tree exactly as it was. A command with `--out`
that CALLS does not know fails the test, so a new command cannot slip by. The work itself is replaced by a
tripwire: a check that lets a bad path through fails at once instead of training, scoring or serving.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
import typer
import yaml
from fixtures import run_config, write_table

from korllama.cli import app

# --- the commands, from the CLI --------------------------------------------------------------------------------


def commands_with_out() -> dict[str, object]:
    """'data synth', 'predict', ...: every command of the typer app (groups walked) that takes --out."""
    found = {}

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        if any("--out" in getattr(p, "opts", ()) for p in command.params):
            found[" ".join(path)] = command
    walk(typer.main.get_command(app), [])
    return found


# How to call each command so that it gets as far as its --out check: (the arguments but --out, what --out names,
# how an existing output of its own kind looks, the function its work starts with). A command missing here fails.
CALLS = {
    "data synth": (lambda s: ["--rows", "60"], "file", None, "korllama.synth.synthesize"),
    "train": (lambda s: ["--config", s.config], "folder", "finished-run", "korllama.training.recipe._train"),
    "predict": (lambda s: [s.run, "--data", s.csv], "file", None, "korllama.predict.predict_file"),
    "evaluate": (lambda s: [s.run, "--data", s.csv], "folder", ("metrics.json",), "korllama.evaluate.evaluate_run"),
    "baseline": (lambda s: ["--train", s.csv], "folder", ("metrics.json",), "korllama.baseline.command.run_baseline"),
    "explain": (lambda s: [s.run, "--data", s.csv], "folder", ("reasons.csv", "explain.json"),
                "korllama.explain.explain_run"),
    "compare": (lambda s: [s.evaluation], "file", None, "korllama.report.compare"),
    "export": (lambda s: [s.run], "folder", ("korllama.json",), "korllama.export.export_run"),
    "demo": (lambda s: ["--rows", "50"], "folder", ("data.csv", "run"), "korllama.demo.run_demo"),
}

FILE_KINDS = ["proc", "sys", "device", "fifo", "folder", "under-file", "in-run", "existing"]
FOLDER_KINDS = ["proc", "sys", "device", "fifo", "file", "under-file", "run", "in-run", "other-files", "existing"]


def test_every_command_with_out_is_in_the_table():
    assert set(commands_with_out()) == set(CALLS), "a command with --out has no row in CALLS (or one is gone)"


def test_every_command_with_out_has_overwrite():
    for name, command in commands_with_out().items():
        assert any("--overwrite" in getattr(p, "opts", ()) for p in command.params), name


# --- the place every case runs in --------------------------------------------------------------------------------

class Scene:
    """tmp_path with a run look-alike, a table, an evaluation folder, a device node, a FIFO, a file, folders."""

    def __init__(self, root: Path, run_dir: Path):
        self.root = root
        self.run = run_dir  # the shared tiny run: read only (the work is a tripwire)
        self.csv = write_table(root)
        self.config = root / "c.yaml"
        self.config.write_text(yaml.safe_dump(run_config()), "utf-8")
        self.evaluation = root / "evaluation"
        self.evaluation.mkdir()
        for name in ("metrics.json", "predictions.csv"):
            shutil.copy(run_dir / "train_summary.json", self.evaluation / name)  # never read: work is a tripwire
        self.fake_run = root / "fake-run"  # what makes a folder a run (korllama.run.RunDir): its config and summary
        self.fake_run.mkdir()
        for name in ("config.yaml", "train_summary.json"):
            shutil.copy(run_dir / name, self.fake_run / name)
        self.device = root / "fakenull"
        os.mknod(self.device, 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        self.fifo = root / "fifo"
        os.mkfifo(self.fifo)
        self.file = root / "file.txt"
        self.file.write_text("not korllama's\n", "utf-8")
        self.folder = root / "afolder"
        self.folder.mkdir()
        self.other = root / "others"
        self.other.mkdir()
        (self.other / "notes.txt").write_text("mine\n", "utf-8")

    def bad(self, kind: str, wants: str, existing) -> Path:
        leaf = "out.csv" if wants == "file" else "out"
        if kind == "existing":
            if wants == "file":
                path = self.root / "existing.csv"
                path.write_text("ID,x\n", "utf-8")
                return path
            if existing == "finished-run":
                return self.fake_run
            path = self.root / "existing"
            path.mkdir()
            for name in existing:
                (path / name).write_text("{}", "utf-8")
            return path
        return {"proc": Path("/proc") / leaf, "sys": Path("/sys") / leaf, "device": self.device, "fifo": self.fifo,
                "folder": self.folder, "file": self.file, "under-file": self.file / leaf, "run": self.fake_run,
                "in-run": self.fake_run / leaf, "other-files": self.other}[kind]


def tree_state(root: Path) -> dict:
    """Every entry under `root`: its type, and the bytes of a regular file (a FIFO or a device is never read)."""
    state = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path)] = (stat.S_IFMT(mode), path.lstat().st_rdev)
    return state


@pytest.fixture
def scene(tmp_path, run_dir) -> Scene:
    return Scene(tmp_path, run_dir)


@pytest.fixture
def tripwires(monkeypatch):
    """The work of every command: reached only when --out was let through."""
    def wire(target: str):
        module, name = target.rsplit(".", 1)

        def started(*args, **kwargs):
            raise AssertionError(f"{target} started: the --out check let a bad path through")
        monkeypatch.setattr(__import__(module, fromlist=[name]), name, started)
    for _, _, _, target in CALLS.values():
        wire(target)


CASES = [(name, kind) for name, (_, wants, _, _) in CALLS.items()
         for kind in (FILE_KINDS if wants == "file" else FOLDER_KINDS) if not (name == "train" and kind == "run")]


@pytest.mark.parametrize(("command", "kind"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_a_bad_out_is_one_sentence_before_any_work(command, kind, scene, tripwires, cli):
    args, wants, existing, _ = CALLS[command]
    bad = scene.bad(kind, wants, existing)
    before = tree_state(scene.root)
    code, out, err = cli(*command.split(), *args(scene), "--out", bad)
    assert code == 2, (out, err)
    assert "Traceback" not in err + out and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "--out" in err or str(bad) in err, err  # the refusal is about --out, not a later error
    assert tree_state(scene.root) == before  # nothing created, replaced or removed


# --- the rule's other halves --------------------------------------------------------------------------------------

def test_overwrite_replaces_only_korllama_s_own_output(scene, cli, tmp_path):
    existing = tmp_path / "synthetic.csv"
    existing.write_text("old\n", "utf-8")
    assert cli("data", "synth", "--rows", "60", "--out", existing, "--overwrite")[0] == 0
    assert existing.read_text("utf-8").startswith("ID,")
    for bad in (scene.device, scene.fifo):  # --overwrite never replaces a device or a FIFO
        code, _, err = cli("data", "synth", "--rows", "60", "--out", bad, "--overwrite")
        assert code == 2 and "not a regular file" in err
        assert not bad.is_file()


def test_baseline_never_writes_into_a_run(scene, tripwires, cli):
    before = tree_state(scene.fake_run)
    code, _, err = cli("baseline", "--train", scene.csv, "--out", scene.fake_run, "--overwrite")
    assert code == 2 and "is a korllama run" in err and "only `korllama train` writes into a run" in err
    assert tree_state(scene.fake_run) == before


def test_explain_refuses_another_system_s_evaluation_folder(scene, tripwires, cli, tmp_path):
    evaluation = tmp_path / "eval-a"
    evaluation.mkdir()
    from korllama.evaluation import metrics

    other = metrics(list("AB"), list("AB"), list("ABCDEFG")).model_copy(update={"system": "run-a", "run": "/runs/a"})
    (evaluation / "metrics.json").write_text(other.text(), "utf-8")
    code, _, err = cli("explain", scene.run, "--data", scene.csv, "--out", evaluation)
    assert code == 2 and "holds the evaluation of run-a" in err, err
    assert sorted(p.name for p in evaluation.iterdir()) == ["metrics.json"]
    code, _, err = cli("explain", scene.run, "--baseline", "--data", scene.csv, "--out", evaluation)
    assert code == 2 and "--baseline is gone" in err and "korllama baseline" in err, err


def test_an_evaluation_replaced_takes_the_old_system_s_explanation_with_it(run_dir, tmp_path):
    from korllama.evaluate import evaluate_run
    from korllama.report import compare
    from korllama.run import Run

    folder = tmp_path / "e"
    folder.mkdir()
    for name in ("reasons.csv", "explain.json", "decision.json"):  # system A's, left from before
        (folder / name).write_text("id,field,delta\nX,rate,0.5\n" if name == "reasons.csv" else "{}", "utf-8")
    evaluate_run(Run.load(run_dir), write_table(tmp_path), folder, limit=20)
    assert sorted(p.name for p in folder.iterdir() if p.name[0] != ".") == ["metrics.json", "predictions.csv"]
    compare([folder], tmp_path / "report.html")
    assert "what each system leans on" not in (tmp_path / "report.html").read_text("utf-8")


def test_compare_writes_one_file_its_plots_embedded(run_dir, tmp_path, cli):
    from korllama.evaluate import evaluate_run
    from korllama.run import Run

    evaluate_run(Run.load(run_dir), write_table(tmp_path), tmp_path / "e", limit=20)
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    code, _, err = cli("compare", tmp_path / "e", "--out", report)
    assert code == 0, err
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]
    assert report.read_text("utf-8").count('src="data:image/png;base64,') >= 2


# --- train --resume ----------------------------------------------------------------------------------------------

def copy_run(run_dir: Path, to: Path, finished: bool = True) -> Path:
    shutil.copytree(run_dir, to)
    if not finished:
        (to / "train_summary.json").unlink()
    return to


def test_resume_of_a_finished_run_is_refused(run_dir, tmp_path, cli):
    run = copy_run(run_dir, tmp_path / "run")
    before = tree_state(run)
    code, _, err = cli("train", "--out", run, "--resume")
    assert code == 2 and "finished at step 4" in err and "nothing to resume" in err, err
    assert tree_state(run) == before


def test_resume_refusal_names_only_what_the_user_set(run_dir, tmp_path, cli):
    run = copy_run(run_dir, tmp_path / "run", finished=False)
    code, _, err = cli("train", "--out", run, "--resume", "train.lr=0.5")
    assert code == 2 and "train.lr" in err and "0.5" in err, err
    assert "prompt" not in err and "data." not in err  # settings the user never gave are not named


# --- serve -------------------------------------------------------------------------------------------------------

@pytest.fixture
def no_server(monkeypatch):
    import uvicorn

    def started(*args, **kwargs):
        raise AssertionError("the server started")
    monkeypatch.setattr(uvicorn, "run", started)


def test_serve_on_a_busy_port_is_one_sentence(run_dir, cli, no_server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = cli("serve", run_dir, "--port", port)
    assert code == 2 and f"Port {port} on 127.0.0.1 is already in use" in err, err
    assert "serving" not in out


@pytest.mark.parametrize("token", [" ", "\t", " secret", "secret\n"])
def test_serve_refuses_a_token_no_client_can_send(run_dir, cli, no_server, monkeypatch, token):
    monkeypatch.setenv("KORLLAMA_TOKEN", token)
    code, _, err = cli("serve", run_dir, "--port", 1)
    assert code == 2 and "KORLLAMA_TOKEN" in err, err


# --- the low items: what a wrong file is called -------------------------------------------------------------------

def test_a_file_read_as_a_spec_is_not_echoed(cli, tmp_path):
    text = "\n".join(f"user{i}:x:{i}:{i}::/home/user{i}:/bin/sh" for i in range(200))
    (tmp_path / "passwd").write_text(text, "utf-8")
    code, _, err = cli("templates", "--spec", tmp_path / "passwd")
    assert code == 2 and "user0:x:0:0" in err and "(7,759 characters)" in err, err
    assert "user100" not in err and len(err) < 400, err  # its start and end, cut: not the file


def test_a_folder_given_as_a_spec_config_or_template_says_so(cli, tmp_path):
    code, _, err = cli("templates", "--spec", tmp_path)
    assert code == 2 and "is a folder" in err, err
    code, _, err = cli("lora-info", "--config", tmp_path)
    assert code == 2 and "is a folder" in err, err
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples/students/spec.yaml").read_text("utf-8"))
    (tmp_path / "folder.txt").mkdir()
    spec["templates"] = {"mine": {"about": "a folder", "file": "folder.txt"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), "utf-8")
    code, _, err = cli("templates", "--spec", tmp_path / "spec.yaml")
    assert code == 2 and "folder.txt, a folder, not a template file" in err, err
