"""Tests for korllama.report: loading evaluations, the plots and the self-contained HTML report
(`korllama compare`). The evaluation folders are made here with korllama.evaluate on hand-made predictions.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import RUN_ROWS

from korllama.choices import Mode
from korllama.errors import KorllamaError
from korllama.evaluation import DecisionFigures, Evaluation, RuleFigures, metrics, write_evaluation
from korllama.evaluation import read_evaluation as load_evaluation
from korllama.plots import plot_train_curve
from korllama.report import compare
from korllama.run import Run

CLASSES = list("ABCDEFG")
PNG = b"\x89PNG\r\n\x1a\n"


def evaluation(folder: Path, system: str | None, accuracy: float, seed: int, proba: bool = True,
               run: Path | None = None, rows: int = 140) -> dict:
    """An evaluation folder like `korllama evaluate` writes: the first `rows` of the same 140 rows (IDs and true
    grades), about `accuracy` of them predicted right."""
    truth = [CLASSES[i] for i in np.random.default_rng(0).integers(0, 7, 140)][:rows]
    rng = np.random.default_rng(seed)
    pred = [t if rng.random() < accuracy else CLASSES[(CLASSES.index(t) + 1) % 7] for t in truth]
    p = None
    if proba:
        p = rng.dirichlet(np.ones(7), size=rows)
        for row, label in zip(p, pred):  # the predicted grade is the most likely one
            row[CLASSES.index(label)] += 1.0
        p /= p.sum(axis=1, keepdims=True)
    result = metrics(truth, pred, CLASSES, p)
    result.mode, result.template, result.rows_per_s, result.run = \
        Mode.SCORE if proba else Mode.TREES, "compact", 123.4, run and str(run)
    if system is not None:
        result.system = system
    write_evaluation(folder, result, [f"ROW_{i:05d}" for i in range(rows)], truth, pred, p, CLASSES)
    return result


@pytest.fixture
def two_systems(tmp_path) -> tuple[Path, Path, dict, dict]:
    run = tmp_path / "run"
    plot_train_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_macro_f1": 0.4},
                      {"step": 4, "loss": 1.0}, {"step": 4, "eval_macro_f1": 0.5}], run / "train_curve.png")
    tuned = evaluation(tmp_path / "eval" / "tuned", "tuned <tiny>", 0.8, seed=1, run=run)
    baseline = evaluation(tmp_path / "eval" / "baseline", None, 0.5, seed=2, proba=False)
    return tmp_path / "eval" / "tuned", tmp_path / "eval" / "baseline", tuned, baseline


def test_load_evaluation(two_systems, tmp_path):
    tuned_dir, baseline_dir, tuned, _ = two_systems
    loaded = load_evaluation(tuned_dir)
    assert loaded.system == "tuned <tiny>" and loaded.macro_f1 == pytest.approx(tuned.macro_f1)
    assert load_evaluation(baseline_dir).system == "baseline"  # no name: the folder's
    (tmp_path / "empty").mkdir()
    with pytest.raises(KorllamaError, match="no metrics.json.*korllama evaluate"):
        load_evaluation(tmp_path / "empty")


def test_compare_writes_a_self_contained_report(two_systems, tmp_path):
    tuned_dir, baseline_dir, tuned, baseline = two_systems
    out = tmp_path / "out" / "report.html"
    result = compare([tuned_dir, baseline_dir], out, title="tiny & co")
    assert result["report"] == str(out)
    assert result["systems"] == [("tuned <tiny>", pytest.approx(tuned.macro_f1)),
                                 ("baseline", pytest.approx(baseline.macro_f1))]
    assert tuned.macro_f1 != pytest.approx(baseline.macro_f1)

    page = out.read_text("utf-8")
    assert page.startswith("<!doctype html>")
    assert "<title>tiny &amp; co</title>" in page
    assert "tuned &lt;tiny&gt;" in page and "<tiny>" not in page  # names are escaped
    assert "baseline" in page
    assert f"{tuned.macro_f1:.4f}" in page and f"{baseline.macro_f1:.4f}" in page
    sources = re.findall(r'src="([^"]*)"', page)
    # confusion matrices, F1 per grade, reliability (the tuned system has probabilities), the training curve
    assert len(sources) == 4
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert "training curve: tuned &lt;tiny&gt;" in page
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG) for s in sources)

    assert not (tmp_path / "out" / "report").exists()  # one file: no folder of PNGs beside it


def test_compare_shows_each_training_curve_once(two_systems, tmp_path):
    tuned_dir, _, _, _ = two_systems
    run = json.loads((tuned_dir / "metrics.json").read_text())["run"]
    before = evaluation(tmp_path / "eval" / "before", "before tuning", 0.3, seed=3, run=Path(run))
    before.base = str(Path(run) / "base")  # the run's base model scored with the run's prompts
    (tmp_path / "eval" / "before" / "metrics.json").write_text(before.text())
    generated = evaluation(tmp_path / "eval" / "generate", "tuned, generation", 0.6, seed=4, proba=False,
                           run=Path(run))
    out = tmp_path / "r.html"
    compare([tmp_path / "eval" / "before", tuned_dir, tmp_path / "eval" / "generate"], out)
    page = out.read_text("utf-8")
    assert generated.system in page
    assert page.count("<h2>training curve") == 1
    assert "training curve: tuned &lt;tiny&gt;" in page


def test_compare_without_probabilities_has_no_reliability_plot(two_systems, tmp_path):
    _, baseline_dir, _, _ = two_systems
    out = tmp_path / "only.html"
    compare([baseline_dir], out)
    assert not (tmp_path / "only").exists()
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
    assert f"tuned <tiny> {tuned.macro_f1:.4f}" in " ".join(stdout.split())
    code, _, err = cli("compare", tuned_dir, tmp_path / "missing", "--out", tmp_path / "x.html")
    assert code == 2 and "metrics.json" in err and "Traceback" not in err
    assert not (tmp_path / "x.html").exists()


def test_metrics_json_is_what_compare_reads(two_systems):
    tuned_dir, _, tuned, _ = two_systems
    on_disk = json.loads((tuned_dir / "metrics.json").read_text("utf-8"))
    assert on_disk["calibration"]["ece"] == pytest.approx(tuned.calibration.ece)
    assert on_disk["classes"] == CLASSES


# --- the rows each system was scored on ---------------------------------------------------------------------------

def test_compare_says_the_systems_share_their_rows(two_systems, tmp_path):
    tuned_dir, baseline_dir, _, _ = two_systems
    compare([tuned_dir, baseline_dir], tmp_path / "r.html")
    assert "Every system is scored on the same 140 rows, with the competition's metric" in \
        (tmp_path / "r.html").read_text("utf-8")


def test_compare_refuses_systems_scored_on_different_rows(two_systems, tmp_path):
    tuned_dir, baseline_dir, _, _ = two_systems
    evaluation(tmp_path / "eval" / "sample", "a sample", 0.7, seed=5, rows=100)
    folders = [tuned_dir, baseline_dir, tmp_path / "eval" / "sample"]
    with pytest.raises(KorllamaError, match=r"different rows \(tuned <tiny> 140 rows, baseline 140 rows, a sample "
                                            r"100 rows\); .*--allow-different-rows"):
        compare(folders, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r").exists()  # refused before any plot

    compare(folders, tmp_path / "r.html", allow_different_rows=True)
    page = (tmp_path / "r.html").read_text("utf-8")
    assert "scored on different rows (tuned &lt;tiny&gt; 140 rows, baseline 140 rows, a sample 100 rows, 100 in " \
           "common): the verdict and each set of figures put side by side only systems scored on one set of rows" \
        in page
    assert "same" not in page
    # the sample is not in the verdict: listed apart, and drawn in figures of its own
    assert "<b>a sample</b>: 100 rows, a sample of the verdict&#39;s rows" in page
    assert "<h2>figures on the verdict&#39;s 140 rows</h2>" in page
    assert "<h2>figures on other rows: a sample (100 rows)</h2>" in page
    assert 'alt="confusion matrices of tuned &lt;tiny&gt;, baseline on 140 rows"' in page


def test_same_ids_with_other_true_grades_are_other_rows(two_systems, tmp_path):
    tuned_dir, _, _, _ = two_systems
    other = tmp_path / "other"
    frame = pd.read_csv(tuned_dir / "predictions.csv", dtype=str, keep_default_na=False)
    frame.loc[0, "truth"] = "G" if frame.loc[0, "truth"] != "G" else "A"  # another table with the same IDs
    other.mkdir()
    frame.to_csv(other / "predictions.csv", index=False)
    (other / "metrics.json").write_text((tuned_dir / "metrics.json").read_text("utf-8"), "utf-8")
    with pytest.raises(KorllamaError, match="different rows"):
        compare([tuned_dir, other], tmp_path / "r.html")


def test_compare_command_allow_different_rows(cli, two_systems, tmp_path):
    tuned_dir, _, _, _ = two_systems
    evaluation(tmp_path / "eval" / "sample", "sample", 0.7, seed=5, rows=60)
    code, _, err = cli("compare", tuned_dir, tmp_path / "eval" / "sample", "--out", tmp_path / "r.html")
    assert code == 2 and "sample 60 rows" in err and err.count("\n") == 1
    code, _, err = cli("compare", tuned_dir, tmp_path / "eval" / "sample", "--out", tmp_path / "r.html",
                       "--allow-different-rows")
    assert code == 0, err
    assert "60 in common" in (tmp_path / "r.html").read_text("utf-8")


def test_compare_refuses_different_label_sets(two_systems, tmp_path):
    tuned_dir, _, _, _ = two_systems
    write_evaluation(tmp_path / "pass", metrics(list("PF"), list("PF"), ["P", "F"]), ["ROW_00000", "ROW_00001"],
                     list("PF"), list("PF"), None, ["P", "F"])
    with pytest.raises(KorllamaError, match=r"different label sets \(tuned <tiny>: A, B, C, D, E, F, G; pass: P, F\)"):
        compare([tuned_dir, tmp_path / "pass"], tmp_path / "r.html", allow_different_rows=True)


@pytest.mark.parametrize("text,piece", [("{not json", "is not valid JSON"),
                                        ('{"n": 3}', "is not a korllama evaluation \\(no .*classes")])
def test_a_broken_metrics_json_is_one_sentence(tmp_path, text, piece):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.json").write_text(text)
    with pytest.raises(KorllamaError, match=piece):
        load_evaluation(tmp_path / "e")


def test_a_report_name_without_a_suffix_is_one_file(two_systems, tmp_path):
    tuned_dir, _, _, _ = two_systems
    compare([tuned_dir], tmp_path / "report")
    assert (tmp_path / "report").read_text("utf-8").startswith("<!doctype html>")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("report")) == ["report"]


def test_compare_shows_where_the_llm_and_the_trees_disagree(tested_run, tmp_path):
    from korllama.baseline.command import run_baseline
    from korllama.evaluate import evaluate_run
    from korllama.synth import synthetic_table

    table = synthetic_table(RUN_ROWS, seed=0)
    llm = evaluate_run(Run.load(tested_run), table, tmp_path / "llm", held_out=True)
    trees = run_baseline(table, None, tmp_path / "trees", valid_fraction=0.2, seed=3, test_fraction=0.1)
    assert llm.n == trees.n == RUN_ROWS // 10  # both on the run's test rows
    compare([tmp_path / "llm", tmp_path / "trees"], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "disagree" in page and "macro-F1 (rule)" in page
    a, b = (pd.read_csv(tmp_path / k / "predictions.csv") for k in ("llm", "trees"))
    differ = int((a["prediction"] != b["prediction"]).sum())
    assert f"different labels on {differ:,}" in page
    # the per-label rows add up to the "all" row
    cells = re.findall(r"<tr><td>(\w+)</td><td>([\d,]+)</td><td>([\d,]+)</td>", page)
    per_label = [c for c in cells if c[0] in list("ABCDEFG")]
    total = next(c for c in cells if c[0] == "all")
    assert sum(int(c[2].replace(",", "")) for c in per_label) == int(total[2].replace(",", "")) == differ
    # rows with nothing repaid (no implied rate) are split out when there are any
    missing = table.frame["implied_rate"].isna().sum()
    assert ("derived features missing" in page) == bool(missing and (a["principal_repaid"] == 0).any())


def test_the_rule_cell_when_no_row_is_left_to_judge_the_rule(two_systems, tmp_path):
    from korllama.report import _rule

    tuned = load_evaluation(two_systems[0])
    empty = DecisionFigures(rows=0, left_out_fitting_rows=9, weights={}, argmax=RuleFigures(), rule=RuleFigures())
    assert _rule(tuned.model_copy(update={"decision": empty})) == {"macro_f1": None}
    judged = DecisionFigures(rows=4000, left_out_fitting_rows=0, weights={}, argmax=RuleFigures(macro_f1=0.5),
                             rule=RuleFigures(macro_f1=0.6))
    assert _rule(tuned.model_copy(update={"decision": judged})) == {"macro_f1": "0.6000", "argmax": "0.5000",
                                                                   "rows": "4,000"}
    assert _rule(tuned.model_copy(update={"decision": None})) is None
    tuned_dir, baseline_dir, _, _ = two_systems  # and as the page shows them
    for folder, decision in ((tuned_dir, judged), (baseline_dir, empty)):
        result = load_evaluation(folder)
        result.decision = decision
        (folder / "metrics.json").write_text(result.text(), "utf-8")
    compare([tuned_dir, baseline_dir], tmp_path / "rule.html")
    page = (tmp_path / "rule.html").read_text("utf-8")
    assert "<td>0.6000 <small>(argmax 0.5000 on 4,000 rows)</small></td>" in page
    assert "<td>— <small>(no row the rule was not fitted on)</small></td>" in page


def time_to_quality_section(page: str) -> str:
    """The page's time-to-quality section: its heading up to the next heading."""
    start = page.index("<h2>time to quality</h2>")
    return page[start:page.index("<h2>", start + 1)]


def test_compare_draws_time_to_quality(run_dir, tmp_path, monkeypatch):
    from korllama import plots
    from korllama.baseline.command import run_baseline
    from korllama.evaluate import evaluate_run
    from korllama.synth import synthetic_table

    table = synthetic_table(RUN_ROWS, seed=0)
    tuned = evaluate_run(Run.load(run_dir), table, tmp_path / "tuned", held_out=True)
    base = evaluate_run(Run.load(run_dir, base=str(run_dir / "base")), table, tmp_path / "base", held_out=True)
    trees = run_baseline(table, None, tmp_path / "trees", valid_fraction=0.2, seed=3, test_fraction=0)  # as run_dir
    drawn = []
    real_plot = plots.plot_time_to_quality
    monkeypatch.setattr(plots, "plot_time_to_quality", lambda *a: drawn.append(a) or real_plot(*a))
    compare([tmp_path / "tuned", tmp_path / "base", tmp_path / "trees"], tmp_path / "r.html")
    (points, curves), = drawn
    summary = json.loads((run_dir / "train_summary.json").read_text("utf-8"))
    assert points == [(tuned.system, pytest.approx(summary["cpu_seconds"] / 60), tuned.macro_f1, 0),
                      (trees.system, pytest.approx(trees.fit_cpu_seconds / 60), trees.macro_f1, 2)]
    assert [(name, k) for name, _, k in curves] == [(run_dir.name, 0)] and curves[0][1]
    section = time_to_quality_section((tmp_path / "r.html").read_text("utf-8"))
    sources = re.findall(r'<img alt="time to quality: [^"]*" src="data:image/png;base64,([^"]*)"', section)
    assert len(sources) == 1 and base64.b64decode(sources[0]).startswith(PNG)
    # the bare base model has no training cost: named in the caption, not drawn; the two others are drawn
    caption = section.split("<img", 1)[0]
    assert re.search(r"so not drawn: (.*?)\.</p>", caption).group(1) == f"{base.system} (a base model, not " \
        "trained here)"  # the only one, and why
    assert "validation curve" in caption and "validation rows" in caption  # the run's curve is drawn as a line


def test_an_evaluation_made_with_a_relative_run_path_is_found_from_another_folder(run_dir, tmp_path, monkeypatch):
    """metrics.json names the run by its absolute path, so compare finds the run's cost, curve and card from any
    working directory, not only the one evaluate ran in."""
    from korllama.cost import training_cost
    from korllama.evaluate import evaluate_run
    from korllama.synth import synthetic_table

    monkeypatch.chdir(run_dir.parent)
    evaluate_run(Run.load(run_dir.name), synthetic_table(RUN_ROWS, seed=0), tmp_path / "tuned", held_out=True)
    monkeypatch.chdir(tmp_path)
    evaluation = load_evaluation(tmp_path / "tuned")
    assert Path(evaluation.run) == run_dir.resolve()
    cost = training_cost(evaluation)
    assert cost.minutes is not None and cost.minutes > 0 and cost.curve


def _scored(**fields) -> Evaluation:
    """An evaluation of three rows with `fields` set (who scored them, what it cost)."""
    return metrics(list("ABC"), list("ABC"), CLASSES).model_copy(update=fields)


def test_time_to_quality_costs_and_curves(run_dir, two_systems):
    from korllama.cost import training_cost

    state = json.loads((run_dir / "trainer_state.json").read_text("utf-8"))
    summary = json.loads((run_dir / "train_summary.json").read_text("utf-8"))
    cost = training_cost(_scored(run=str(run_dir)))
    assert cost.minutes == pytest.approx(summary["cpu_seconds"] / 60) and cost.minutes > 0
    assert cost.curve == [(e["eval_cpu_minutes"], e["eval_macro_f1"]) for e in state["log_history"]
                          if "eval_macro_f1" in e] and cost.curve
    assert training_cost(_scored(run=str(run_dir), base="x")).minutes is None  # a bare base
    assert training_cost(_scored(mode="trees", fit_cpu_seconds=90.0)).minutes == 1.5
    tuned_dir, _, _, _ = two_systems  # its run folder has no train_summary.json: a run from before CPU time
    old = training_cost(load_evaluation(tuned_dir))
    assert old.minutes is None and old.missing == "trained before korllama recorded CPU time"
    gone = training_cost(_scored(run=str(run_dir / "moved-away")))  # moved or deleted after evaluate
    assert gone.minutes is None and "moved-away is not found" in gone.missing


def test_compare_leaves_time_to_quality_out_when_no_system_has_a_cost(two_systems, tmp_path):
    tuned_dir, baseline_dir, tuned, baseline = two_systems
    compare([tuned_dir, baseline_dir], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text("utf-8")
    assert "<h2>time to quality</h2>" not in page and 'alt="time to quality' not in page
    note = re.search(r"<p><small>Time to quality: (.*?)</small></p>", page).group(1)
    assert "tuned &lt;tiny&gt;" in note and "baseline" in note and "left out" in note
