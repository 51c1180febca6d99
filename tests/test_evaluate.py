"""Tests for korllama.evaluate (metrics, reliability, evaluate_run), korllama.baseline.command.run_baseline and
korllama.baseline.TreeBaseline.

The metrics are checked against scikit-learn on hand-made predictions; evaluate_run runs on a tiny trained run
(see tests/test_predict.py); the tree baseline on a synthetic table with few, small trees and one thread.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import CLASSES, RUN_ROWS, unlabelled_csv
from sklearn.metrics import accuracy_score, f1_score

from korllama.baseline import TreeBaseline
from korllama.baseline.command import run_baseline
from korllama.config import load_config
from korllama.data import read_table, split
from korllama.errors import KorllamaError
from korllama.evaluate import evaluate_run
from korllama.evaluation import metrics, reliability
from korllama.run import Run
from korllama.synth import synthesize, synthetic_table

KEYS = {"macro_f1", "accuracy", "qwk", "n", "per_class", "confusion", "invalid_rate", "rows_per_s"}
FAST_TREES = dict(n_estimators=60, num_leaves=15, max_bin=255, n_jobs=1)  # seconds, not minutes, on a busy CPU




@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory) -> Path:
    """The very rows the tiny run trained on (synthetic, seed 0), as a labelled CSV."""
    path = tmp_path_factory.mktemp("data") / "train.csv"
    synthesize(RUN_ROWS, seed=0).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def loans():
    return synthetic_table(2000, seed=0)


# --- metrics ---------------------------------------------------------------------------------------------------

def test_metrics_agree_with_scikit_learn():
    truth = list("AABBBCCDDEEFGG") * 3
    pred = list("ABBBACCDCEFFGD") * 3
    m = metrics(truth, pred, CLASSES)
    assert m.n == len(truth)
    assert m.macro_f1 == pytest.approx(f1_score(truth, pred, labels=CLASSES, average="macro"))
    assert m.accuracy == pytest.approx(accuracy_score(truth, pred))
    assert m.invalid_rate == 0.0
    assert m.classes == CLASSES
    per = f1_score(truth, pred, labels=CLASSES, average=None)
    for i, c in enumerate(CLASSES):
        assert m.per_class[c].f1 == pytest.approx(per[i])
        assert m.per_class[c].support == truth.count(c)
        assert set(m.per_class[c].model_dump()) == {"precision", "recall", "f1", "support"}
    confusion = np.asarray(m.confusion)
    assert confusion.shape == (7, 7)
    assert confusion.sum(axis=1).tolist() == [truth.count(c) for c in CLASSES]  # rows = truth
    assert confusion.sum(axis=0).tolist() == [pred.count(c) for c in CLASSES]  # columns = prediction
    assert confusion[0, 1] == 3 and confusion[1, 0] == 3  # A->B once and B->A once per copy


def test_invalid_predictions_count_as_wrong():
    truth = list("ABCDEFG") + list("ABC")
    pred = list("ABCDEFG") + [None, "", "not a grade"]
    m = metrics(truth, pred, CLASSES)
    assert m.invalid_rate == pytest.approx(0.3)
    assert m.accuracy == pytest.approx(0.7)
    as_wrong = list("ABCDEFG") + ["", "", ""]
    assert m.macro_f1 == pytest.approx(f1_score(truth, as_wrong, labels=CLASSES, average="macro",
                                                   zero_division=0))
    assert m.macro_f1 < 1.0
    assert m.per_class["A"].recall == pytest.approx(0.5)
    assert np.asarray(m.confusion).sum() == 7  # the invalid answers are in no column
    assert m.qwk == pytest.approx(1.0)  # QWK is over the valid answers only
    everything_invalid = metrics(list("AB"), [None, ""], CLASSES)
    assert everything_invalid.invalid_rate == 1.0 and everything_invalid.accuracy == 0.0


def test_qwk_rewards_near_misses():
    truth = list("ABCDEFG") * 4
    shift = {c: CLASSES[min(i + 1, 6)] for i, c in enumerate(CLASSES)}
    shift2 = {c: CLASSES[min(i + 2, 6)] for i, c in enumerate(CLASSES)}
    perfect = metrics(truth, truth, CLASSES)
    assert perfect.qwk == pytest.approx(1.0) and perfect.macro_f1 == pytest.approx(1.0)
    off_by_one = metrics(truth, [shift[t] for t in truth], CLASSES).qwk
    off_by_two = metrics(truth, [shift2[t] for t in truth], CLASSES).qwk
    assert 1.0 > off_by_one > off_by_two


def test_reliability_bins_and_a_perfectly_calibrated_case():
    classes = ["A", "B", "C"]
    # 10 rows at confidence 0.8 of which 8 right, 10 at 0.5 of which 5 right: calibrated exactly
    proba = np.array([[0.8, 0.1, 0.1]] * 10 + [[0.25, 0.5, 0.25]] * 10)
    truth = ["A"] * 8 + ["C"] * 2 + ["B"] * 5 + ["A"] * 5
    cal = reliability(truth, proba, classes)
    assert sum(cal.count) == 20 and len(cal.count) == 10 and len(cal.bin_edges) == 11
    assert cal.ece == pytest.approx(0.0, abs=1e-12)
    filled = [i for i, n in enumerate(cal.count) if n]
    assert [cal.count[i] for i in filled] == [10, 10]
    assert [cal.accuracy[i] for i in filled] == pytest.approx([0.5, 0.8])
    assert all(cal.confidence[i] is None for i in range(10) if i not in filled)

    overconfident = reliability(["A"] * 5 + ["B"] * 5, np.array([[0.9, 0.05, 0.05]] * 10), classes)
    assert overconfident.ece == pytest.approx(0.4)  # says 0.9, right half of the time
    certain = reliability(["A", "B"], np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), classes)
    assert certain.count[-1] == 2 and certain.ece == pytest.approx(0.0)  # confidence 1.0: the last bin
    with_proba = metrics(truth, ["A"] * 10 + ["B"] * 10, classes, proba)
    assert with_proba.calibration.ece == pytest.approx(0.0, abs=1e-12)


# --- evaluate_run on a tiny run ---------------------------------------------------------------------------------

def test_evaluate_run_on_the_held_out_split(tested_run, labelled_csv, tmp_path):
    out = tmp_path / "tuned"
    result = evaluate_run(Run.load(tested_run), labelled_csv, out, held_out=True, batch_size=8)
    data = load_config(tested_run / "config.yaml").data
    assert data.split_seed != 0  # the run's own split, not the default one
    held_out = split(read_table(labelled_csv), data.valid_fraction, data.split_seed, data.test_fraction)
    valid = held_out.test  # the rows no choice was made on, not the validation rows the run chose its weights on

    on_disk = json.loads((out / "metrics.json").read_text("utf-8"))
    assert on_disk == json.loads(result.text())
    assert KEYS <= set(on_disk)
    assert on_disk["n"] == len(valid) == RUN_ROWS // 10
    assert set(pd.read_csv(out / "predictions.csv", dtype={"ID": str})["ID"]) == set(valid.ids)
    assert set(valid.ids).isdisjoint(held_out.valid.ids)
    assert on_disk["held_out"] is True and on_disk["mode"] == "score" and on_disk["system"] == "run"
    assert on_disk["rows_per_s"] > 0
    assert on_disk["invalid_rate"] == 0.0  # rank scoring always answers a grade
    predicted = pd.read_csv(out / "predictions.csv", dtype={"ID": str})["ID"].tolist()
    assert predicted == valid.ids.tolist()
    assert np.asarray(on_disk["confusion"]).shape == (7, 7)
    assert np.asarray(on_disk["confusion"]).sum() == len(valid)
    assert set(on_disk["per_class"]) == set(CLASSES)
    assert all(set(v) == {"precision", "recall", "f1", "support"} for v in on_disk["per_class"].values())
    assert "calibration" in on_disk and sum(on_disk["calibration"]["count"]) == len(valid)

    predictions = pd.read_csv(out / "predictions.csv", dtype={"ID": str, "truth": str, "prediction": str})
    scored = ["ID", "truth", "prediction", *[f"P_{c}" for c in CLASSES]]
    assert list(predictions.columns)[:len(scored)] == scored  # then the rows' columns, for group metrics
    assert predictions["ID"].tolist() == valid.ids.tolist()  # exactly the rows training never saw
    assert predictions["truth"].tolist() == valid.labels.tolist()
    proba = predictions[[f"P_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert predictions["prediction"].tolist() == [CLASSES[i] for i in proba.argmax(axis=1)]
    assert on_disk["macro_f1"] == pytest.approx(f1_score(predictions["truth"], predictions["prediction"],
                                                         labels=CLASSES, average="macro", zero_division=0))


def test_evaluate_run_in_generate_mode(run_dir, labelled_csv, tmp_path):
    out = tmp_path / "generate"
    result = evaluate_run(Run.load(run_dir), labelled_csv, out, mode="generate", limit=5, held_out=True, batch_size=5)
    assert result.n == 5 and result.mode == "generate" and result.system == "run-generate"
    assert "calibration" not in result
    predictions = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert list(predictions.columns)[:4] == ["ID", "truth", "prediction", "generated"]
    assert len(predictions) == 5
    assert set(predictions["prediction"]) <= set(CLASSES) | {""}
    assert result.invalid_rate == pytest.approx((predictions["prediction"] == "").mean())
    assert json.loads((out / "metrics.json").read_text())["invalid_rate"] == result.invalid_rate


def test_evaluate_run_before_tuning_is_named_apart_from_the_run(run_dir, labelled_csv, tmp_path):
    before = evaluate_run(Run.load(run_dir, base=str(run_dir / "base")), labelled_csv, tmp_path / "before", limit=8)
    assert before.system == "base (run prompts)" and before.base == str(run_dir / "base")
    after = evaluate_run(Run.load(run_dir), labelled_csv, tmp_path / "after", limit=8)
    assert after.system == "run" and after.base is None
    bare = evaluate_run(Run.load(base=str(run_dir / "base")), labelled_csv, tmp_path / "bare", limit=4)
    assert bare.system == "base" and bare.run is None and bare.template == "compact"


def test_evaluate_run_refuses_an_unlabelled_table(run_dir, tmp_path):
    data = tmp_path / "test.csv"
    synthesize(10, seed=1).drop(columns=["대출등급"]).to_csv(data, index=False)
    with pytest.raises(KorllamaError, match="대출등급.*korllama predict"):
        evaluate_run(Run.load(run_dir), data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_command(cli, run_dir, labelled_csv, tmp_path):
    code, out, err = cli("evaluate", run_dir, "--data", labelled_csv, "--out", tmp_path / "e", "--limit", 12,
                         "--name", "tuned tiny")
    assert code == 0, err
    assert "tuned tiny: macro-F1" in " ".join(out.split())
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["system"] == "tuned tiny"
    code, _, err = cli("evaluate", run_dir, "--data", labelled_csv, "--out", tmp_path / "x", "--mode", "guess")
    assert code == 2 and "--mode" in err and not (tmp_path / "x").exists()


# --- the tree baseline -------------------------------------------------------------------------------------------

def test_tree_baseline_beats_the_majority_class(loans):
    fit_on, score_on, _ = split(loans, 0.2, 0)
    model = TreeBaseline(**FAST_TREES).fit(fit_on)
    proba = model.predict_proba(score_on)
    assert proba.shape == (len(score_on), 7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    pred = model.predict(score_on)
    assert list(pred) == [CLASSES[i] for i in proba.argmax(axis=1)]

    majority = fit_on.labels.value_counts().idxmax()
    floor = f1_score(score_on.labels, [majority] * len(score_on), labels=CLASSES, average="macro", zero_division=0)
    trees = f1_score(score_on.labels, pred, labels=CLASSES, average="macro", zero_division=0)
    assert floor < 0.1
    assert trees > floor + 0.3, (trees, floor)


def test_tree_baseline_takes_categories_it_never_saw(loans):
    frame = loans.frame
    fit_on = loans.subset(frame.index[(frame["home_ownership"] != "OWN") & (frame["purpose"] != "car")])
    model = TreeBaseline(**FAST_TREES).fit(fit_on)
    assert "OWN" not in model.categories_["home_ownership"]
    unseen = loans.subset(frame.index[(frame["home_ownership"] == "OWN") | (frame["purpose"] == "car")])
    assert len(unseen) > 50
    proba = model.predict_proba(unseen)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    odd = unseen.frame.copy()
    odd["purpose"] = "space travel"  # a value that exists nowhere
    proba = model.predict_proba(type(unseen)(odd, unseen.spec))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_tree_baseline_keeps_absent_classes_as_zero_columns(loans):
    frame = loans.frame
    without_g = loans.subset(frame.index[frame["grade"] != "G"])
    model = TreeBaseline(**FAST_TREES).fit(without_g)
    proba = model.predict_proba(without_g.subset(without_g.frame.index[:50]))
    assert proba.shape == (50, 7)
    assert (proba[:, 6] == 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_run_baseline_writes_the_same_metrics(monkeypatch, tmp_path):
    import korllama.baseline.tune

    monkeypatch.setattr(korllama.baseline.tune, "TreeBaseline", functools.partial(TreeBaseline, **FAST_TREES))
    data = tmp_path / "train.csv"
    synthesize(600, seed=2).to_csv(data, index=False)
    result = run_baseline(data, None, tmp_path / "baseline")
    on_disk = json.loads((tmp_path / "baseline" / "metrics.json").read_text("utf-8"))
    assert KEYS <= set(on_disk)
    assert on_disk["n"] == 60 and on_disk["train_rows"] == 420  # 70% fit, 20% validation unused, 10% test scored
    assert on_disk["system"] == result.system == "baseline (LightGBM)"
    assert on_disk["run"] == str((tmp_path / "baseline").resolve())  # the trees are kept there, a system
    assert np.asarray(on_disk["confusion"]).shape == (7, 7)
    assert on_disk["macro_f1"] > 0.3
    predictions = pd.read_csv(tmp_path / "baseline" / "predictions.csv", dtype={"ID": str})
    scored = ["ID", "truth", "prediction", *[f"P_{c}" for c in CLASSES]]
    assert list(predictions.columns)[:len(scored)] == scored  # then the rows' columns, for group metrics
    assert predictions["ID"].tolist() == split(read_table(data), 0.2, 0, 0.1).test.ids.tolist()

    evaluate_on = tmp_path / "eval.csv"
    synthesize(50, seed=3).to_csv(evaluate_on, index=False)
    separate = run_baseline(data, evaluate_on, tmp_path / "separate")
    assert separate.n == 50 and separate.train_rows == 600


def test_baseline_command_takes_the_split_from_a_run_config(monkeypatch, tmp_path):
    import korllama.baseline.tune
    from korllama.cli import main

    monkeypatch.setattr(korllama.baseline.tune, "TreeBaseline", functools.partial(TreeBaseline, **FAST_TREES))
    data, config = tmp_path / "train.csv", tmp_path / "config.yaml"
    synthesize(600, seed=2).to_csv(data, index=False)
    config.write_text("data: {valid_fraction: 0.3, test_fraction: 0.15, split_seed: 5}\n")
    assert main(["baseline", "--train", str(data), "--out", str(tmp_path / "b"), "--config", str(config)]) == 0
    predictions = pd.read_csv(tmp_path / "b" / "predictions.csv", dtype={"ID": str})
    assert predictions["ID"].tolist() == split(read_table(data), 0.3, 5, 0.15).test.ids.tolist()


# --- metrics.json is valid JSON; --held-out only on the run's own table --------------------------------------------

def test_metrics_json_holds_null_where_a_metric_is_undefined(tmp_path):
    import warnings

    from korllama.evaluation import write_evaluation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: kappa is undefined with one label
        result = metrics(list("AAA"), list("AAA"), CLASSES)
    assert np.isnan(result.qwk)

    def refuse(constant):
        raise AssertionError(f"{constant} in metrics.json")

    write_evaluation(tmp_path / "e", result, ["1", "2", "3"], list("AAA"), list("AAA"), None, CLASSES)
    on_disk = json.loads((tmp_path / "e" / "metrics.json").read_text("utf-8"), parse_constant=refuse)
    assert on_disk["qwk"] is None and on_disk["accuracy"] == 1.0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [".korllama-manifest.json", "metrics.json",
                                                                   "predictions.csv"]


def test_held_out_refuses_a_table_the_run_was_not_trained_on(run_dir, labelled_csv, tmp_path):
    from korllama.evaluate import held_out_rows

    same = held_out_rows(Run.load(run_dir), labelled_csv, read_table(labelled_csv))  # the run's synthetic rows
    assert len(same) == RUN_ROWS // 5
    other = tmp_path / "other.csv"
    synthesize(RUN_ROWS, seed=1).to_csv(other, index=False)  # same size and IDs, other loans
    with pytest.raises(KorllamaError, match=r"--held-out: other\.csv is not the table .* was trained on \(a synthetic "
                                            r"table of 200 rows, seed 0; `korllama data synth --rows 200 --seed 0"):
        held_out_rows(Run.load(run_dir), other, read_table(other))


def test_held_out_compares_a_training_file_by_its_hash(run_dir, tmp_path):
    import hashlib
    import shutil

    from korllama.evaluate import held_out_rows

    trained_on = tmp_path / "train.csv"
    synthesize(300, seed=4).to_csv(trained_on, index=False)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "logs", "base"))
    summary = json.loads((run / "train_summary.json").read_text())
    summary["data"] = {"source": str(trained_on), "rows": 300,
                       "sha256": hashlib.sha256(trained_on.read_bytes()).hexdigest()}
    (run / "train_summary.json").write_text(json.dumps(summary))

    copy = tmp_path / "copy.csv"
    shutil.copy(trained_on, copy)  # the same bytes under another name: the same table
    assert len(held_out_rows(Run.load(run), copy, read_table(copy))) == 60
    edited = tmp_path / "edited.csv"
    edited.write_text(trained_on.read_text().replace("SYN_00007", "SYN_99999"))
    with pytest.raises(KorllamaError, match=rf"edited\.csv is not the table .* \({trained_on}, 300 rows\)"):
        held_out_rows(Run.load(run), edited, read_table(edited))


def test_evaluate_command_refuses_held_out_rows_of_another_file(cli, run_dir, tmp_path):
    other = tmp_path / "other.csv"
    synthesize(150, seed=2).to_csv(other, index=False)
    code, _, err = cli("evaluate", run_dir, "--data", other, "--held-out", "--out", tmp_path / "e")
    assert code == 2 and "is not the table" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_held_out_of_a_one_row_file_is_one_sentence(cli, run_dir, tmp_path):
    one = tmp_path / "one.csv"
    synthesize(1, seed=0).to_csv(one, index=False)
    code, _, err = cli("evaluate", run_dir, "--data", one, "--held-out", "--out", tmp_path / "e")
    assert code == 2 and "Traceback" not in err and "one.csv" in err
    code, _, err = cli("baseline", "--train", one, "--out", tmp_path / "b")
    assert code == 2 and "one.csv has 1 labelled row of 1 label" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists() and not (tmp_path / "b").exists()


# --- the macro-F1 decision rule (korllama.decision), applied by predict and evaluate -----------------------------

def test_evaluate_with_the_decision_rule_never_judges_it_on_its_fitting_rows(run_dir, tmp_path):
    import json as _json

    from korllama.decision import DecisionRule
    from korllama.layout import RunDir
    from korllama.synth import synthetic_table

    rule = DecisionRule.load(RunDir(run_dir).decision)
    table = synthetic_table(RUN_ROWS, seed=0)
    plain = evaluate_run(Run.load(run_dir), table, tmp_path / "argmax", held_out=True)
    ruled = evaluate_run(Run.load(run_dir), table, tmp_path / "rule", held_out=True, decision="macro-f1")
    fitted = set(rule.fitted_ids)
    scored = pd.read_csv(tmp_path / "rule" / "predictions.csv", dtype={"ID": str})
    assert fitted and not fitted & set(scored["ID"])  # the fitting rows are left out
    assert ruled.n == plain.n - len(fitted & set(pd.read_csv(tmp_path / "argmax" / "predictions.csv")["ID"]))
    proba = scored[[f"P_{c}" for c in CLASSES]].to_numpy()
    assert list(scored["prediction"]) == list(rule.apply(proba))  # predictions by the rule, not argmax
    side = _json.loads((tmp_path / "argmax" / "metrics.json").read_text())["decision"]
    assert side["rows"] == ruled.n and side["left_out_fitting_rows"] == plain.n - ruled.n
    assert side["macro-f1"]["macro_f1"] == pytest.approx(ruled.macro_f1, abs=1e-9)
    assert set(side["argmax"]) == {"macro_f1", "accuracy"}


def test_predict_with_the_decision_rule(cli, run_dir, tmp_path):
    from korllama.decision import DecisionRule
    from korllama.layout import RunDir

    data = unlabelled_csv(tmp_path / "test.csv", rows=20)
    code, _, err = cli("predict", run_dir, "--data", data, "--out", tmp_path / "p.csv", "--proba",
                       "--decision", "macro-f1")
    assert code == 0, err
    out = pd.read_csv(tmp_path / "p.csv")
    rule = DecisionRule.load(RunDir(run_dir).decision)
    assert list(out["대출등급"]) == list(rule.apply(out[[f"P_{c}" for c in CLASSES]].to_numpy()))


def test_decision_rule_errors_are_one_sentence(cli, run_dir, tmp_path):
    import shutil

    data = unlabelled_csv(tmp_path / "test.csv", rows=5)
    code, _, err = cli("predict", run_dir, "--data", data, "--out", tmp_path / "p.csv", "--decision", "best")
    assert code == 2 and err.count("\n") == 1 and "'best' is not one of 'argmax', 'macro-f1'" in err
    assert "korllama predict --help" in err and "╭" not in err  # one line, not typer's box
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    (old / "decision.json").unlink()
    code, _, err = cli("predict", old, "--data", data, "--out", tmp_path / "p.csv", "--decision", "macro-f1")
    assert code == 2 and "has no decision rule" in err and not (tmp_path / "p.csv").exists()


def test_a_run_made_before_test_rows_keeps_its_two_way_split(tested_run, labelled_csv, tmp_path):
    import shutil

    import yaml

    from korllama.evaluate import held_out_rows

    old = tmp_path / "old-run"  # the same run as an older korllama wrote it: no data.test_fraction in config.yaml
    shutil.copytree(tested_run, old, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    saved = yaml.safe_load((old / "config.yaml").read_text("utf-8"))
    del saved["data"]["test_fraction"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved), "utf-8")
    run = Run.load(old)
    assert run.config.data.test_fraction == 0 and run.split().test is None
    table = read_table(labelled_csv)
    rows = held_out_rows(run, labelled_csv, table)  # its validation rows, as before, not the new run's test rows
    assert len(rows) == RUN_ROWS // 5
    assert rows.ids.tolist() == Run.load(tested_run).split(table).valid.ids.tolist()
