"""Tests for korllama.report: the training curve, loading evaluations, the plots and the self-contained HTML report
(`korllama compare`). The evaluation folders are made here with korllama.evaluate on hand-made predictions.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from korllama.errors import KorllamaError
from korllama.evaluate import metrics, write_evaluation
from korllama.report import compare, load_evaluation, plot_train_curve

CLASSES = list("ABCDEFG")
PNG = b"\x89PNG\r\n\x1a\n"


def evaluation(folder: Path, system: str | None, accuracy: float, seed: int, proba: bool = True,
               run: Path | None = None) -> dict:
    """An evaluation folder like `korllama evaluate` writes: 140 rows, about `accuracy` of them right."""
    rng = np.random.default_rng(seed)
    truth = [CLASSES[i] for i in rng.integers(0, 7, 140)]
    pred = [t if rng.random() < accuracy else CLASSES[(CLASSES.index(t) + 1) % 7] for t in truth]
    p = None
    if proba:
        p = rng.dirichlet(np.ones(7), size=140)
        for row, label in zip(p, pred):  # the predicted grade is the most likely one
            row[CLASSES.index(label)] += 1.0
        p /= p.sum(axis=1, keepdims=True)
    result = metrics(truth, pred, CLASSES, p)
    result.update(mode="score" if proba else "trees", template="compact", rows_per_s=123.4, run=run and str(run))
    if system is not None:
        result["system"] = system
    write_evaluation(folder, result, [f"ROW_{i:05d}" for i in range(140)], truth, pred, p, CLASSES)
    return result


@pytest.fixture
def two_systems(tmp_path) -> tuple[Path, Path, dict, dict]:
    run = tmp_path / "run"
    plot_train_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_macro_f1": 0.4},
                      {"step": 4, "loss": 1.0}, {"step": 4, "eval_macro_f1": 0.5}], run / "train_curve.png")
    tuned = evaluation(tmp_path / "eval" / "tuned", "tuned <tiny>", 0.8, seed=1, run=run)
    baseline = evaluation(tmp_path / "eval" / "baseline", None, 0.5, seed=2, proba=False)
    return tmp_path / "eval" / "tuned", tmp_path / "eval" / "baseline", tuned, baseline


def test_plot_train_curve_writes_a_png(tmp_path):
    history = [{"step": s, "loss": 3.0 / s} for s in range(1, 6)] + [{"step": 5, "eval_macro_f1": 0.3}]
    path = plot_train_curve(history, tmp_path / "deep" / "curve.png")
    assert path.read_bytes().startswith(PNG)
    assert plot_train_curve([], tmp_path / "empty.png").read_bytes().startswith(PNG)  # no history yet: still a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "empty.png"]  # no temporary files left


def test_load_evaluation(two_systems, tmp_path):
    tuned_dir, baseline_dir, tuned, _ = two_systems
    loaded = load_evaluation(tuned_dir)
    assert loaded["system"] == "tuned <tiny>" and loaded["macro_f1"] == pytest.approx(tuned["macro_f1"])
    assert load_evaluation(baseline_dir)["system"] == "baseline"  # no name: the folder's
    (tmp_path / "empty").mkdir()
    with pytest.raises(KorllamaError, match="no metrics.json.*korllama evaluate"):
        load_evaluation(tmp_path / "empty")


def test_compare_writes_a_self_contained_report(two_systems, tmp_path):
    tuned_dir, baseline_dir, tuned, baseline = two_systems
    out = tmp_path / "out" / "report.html"
    result = compare([tuned_dir, baseline_dir], out, title="tiny & co")
    assert result["report"] == str(out)
    assert result["systems"] == [("tuned <tiny>", pytest.approx(tuned["macro_f1"])),
                                 ("baseline", pytest.approx(baseline["macro_f1"]))]
    assert tuned["macro_f1"] != pytest.approx(baseline["macro_f1"])

    page = out.read_text("utf-8")
    assert page.startswith("<!doctype html>")
    assert "<title>tiny &amp; co</title>" in page
    assert "tuned &lt;tiny&gt;" in page and "<tiny>" not in page  # names are escaped
    assert "baseline" in page
    assert f"{tuned['macro_f1']:.4f}" in page and f"{baseline['macro_f1']:.4f}" in page
    sources = re.findall(r'src="([^"]*)"', page)
    # confusion matrices, F1 per grade, reliability (the tuned system has probabilities), the training curve
    assert len(sources) == 4
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert "training curve: tuned &lt;tiny&gt;" in page
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG) for s in sources)

    assets = tmp_path / "out" / "report"
    pngs = sorted(p.name for p in assets.iterdir())
    assert pngs == ["confusion.png", "per_class_f1.png", "reliability.png"]
    assert all((assets / name).read_bytes().startswith(PNG) for name in pngs)


def test_compare_shows_each_training_curve_once(two_systems, tmp_path):
    tuned_dir, _, _, _ = two_systems
    run = json.loads((tuned_dir / "metrics.json").read_text())["run"]
    before = evaluation(tmp_path / "eval" / "before", "before tuning", 0.3, seed=3, run=Path(run))
    before["base"] = str(Path(run) / "base")  # the run's base model scored with the run's prompts
    (tmp_path / "eval" / "before" / "metrics.json").write_text(json.dumps(before))
    generated = evaluation(tmp_path / "eval" / "generate", "tuned, generation", 0.6, seed=4, proba=False,
                           run=Path(run))
    out = tmp_path / "r.html"
    compare([tmp_path / "eval" / "before", tuned_dir, tmp_path / "eval" / "generate"], out)
    page = out.read_text("utf-8")
    assert generated["system"] in page
    assert page.count("<h2>training curve") == 1
    assert "training curve: tuned &lt;tiny&gt;" in page


def test_compare_without_probabilities_has_no_reliability_plot(two_systems, tmp_path):
    _, baseline_dir, _, _ = two_systems
    out = tmp_path / "only.html"
    compare([baseline_dir], out)
    assert not (tmp_path / "only" / "reliability.png").exists()
    assert (tmp_path / "only" / "confusion.png").read_bytes().startswith(PNG)
    assert out.read_text("utf-8").count("data:image/png;base64,") == 2


def test_compare_refuses_a_folder_without_metrics(two_systems, tmp_path):
    tuned_dir, _, _, _ = two_systems
    (tmp_path / "nothing").mkdir()
    with pytest.raises(KorllamaError, match="nothing holds no metrics.json"):
        compare([tuned_dir, tmp_path / "nothing"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_compare_command(cli, two_systems, tmp_path):
    tuned_dir, baseline_dir, tuned, _ = two_systems
    out = tmp_path / "r.html"
    code, stdout, err = cli("compare", tuned_dir, baseline_dir, "--out", out)
    assert code == 0, err
    assert out.is_file() and "data:image/png;base64," in out.read_text("utf-8")
    assert f"tuned <tiny> {tuned['macro_f1']:.4f}" in " ".join(stdout.split())
    code, _, err = cli("compare", tuned_dir, tmp_path / "missing", "--out", tmp_path / "x.html")
    assert code == 2 and "metrics.json" in err and "Traceback" not in err
    assert not (tmp_path / "x.html").exists()


def test_metrics_json_is_what_compare_reads(two_systems):
    tuned_dir, _, tuned, _ = two_systems
    on_disk = json.loads((tuned_dir / "metrics.json").read_text("utf-8"))
    assert on_disk["calibration"]["ece"] == pytest.approx(tuned["calibration"]["ece"])
    assert on_disk["classes"] == CLASSES
