"""The tree baseline as a system of its own (issue 30): `korllama baseline --out B` keeps its tuned trees (LightGBM
text, no pickle), and predict, evaluate, explain, serve and compare take B the way they take a run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from korllama.baseline.estimator import TreeBaseline
from korllama.baseline.saved import load_trees, save_trees
from korllama.data import read_table, split
from korllama.evaluation import read_evaluation
from korllama.explain import explain
from korllama.references import reference_values
from korllama.synth import synthesize, synthetic_table
from korllama.system import load_system
from korllama.trees import Trees

ROWS = 600


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`korllama baseline` on 600 synthetic rows (its default split: 480 fitted, 120 held out), through the CLI."""
    from korllama.cli.app import main

    folder = tmp_path_factory.mktemp("trees")
    data = folder / "train.csv"
    synthesize(ROWS, seed=2).to_csv(data, index=False)
    assert main(["baseline", "--train", str(data), "--out", str(folder / "B")]) == 0
    return folder / "B", data


def test_saved_trees_give_the_fitted_probabilities(tmp_path):
    from korllama.baseline import defaults_for

    table = synthetic_table(3000, seed=5)
    settings = defaults_for(table)  # as `korllama baseline` fits: fine bins, a model of the rows missing the rate
    model = TreeBaseline(n_estimators=40, num_leaves=7, n_jobs=1, **settings).fit(table)
    assert len(model.models_) == 2  # the rows missing the rate have a model of their own: both parts are saved
    written = save_trees(model, tmp_path / "trees")
    assert {p.suffix for p in written} == {".txt", ".json"}  # LightGBM's text and JSON: nothing to unpickle
    loaded = load_trees(tmp_path / "trees")
    rows = synthetic_table(300, seed=6)
    np.testing.assert_array_equal(loaded.predict_proba(rows), model.predict_proba(rows))
    assert list(loaded.classes_) == list(model.classes_)


def test_a_baseline_folder_is_a_system(fitted):
    folder, _ = fitted
    system = load_system(folder)
    assert isinstance(system, Trees) and system.name == "baseline (LightGBM)"
    assert system.kind == "trees" and system.stored_rule is not None and system.references
    assert {"loan_amount", "implied_rate"} <= set(system.fields)  # every column and derived feature
    record = json.loads((folder / "trees.json").read_text("utf-8"))
    assert record["fit_rows"] == 420 and record["split"] == {"valid_fraction": 0.2, "test_fraction": 0.1, "seed": 0}


def test_predict_with_the_trees_grades_as_the_baseline_scored(fitted, cli, tmp_path):
    folder, data = fitted
    code, out, err = cli("predict", folder, "--data", data, "--proba", "--out", tmp_path / "graded.csv")
    assert code == 0, err
    graded = pd.read_csv(tmp_path / "graded.csv", dtype={"ID": str})
    assert len(graded) == ROWS
    scored = pd.read_csv(folder / "predictions.csv", dtype={"ID": str})  # the held-out rows, at fit time
    both = scored.merge(graded, on="ID")
    assert len(both) == 60  # the test rows
    assert (both["prediction"] == both["대출등급"]).all()
    assert np.abs(both["P_A_x"] - both["P_A_y"]).max() <= 1e-6


def test_evaluate_held_out_with_the_trees_repeats_their_figures(fitted, cli, tmp_path):
    folder, data = fitted
    code, _, err = cli("evaluate", folder, "--data", data, "--held-out", "--out", tmp_path / "again")
    assert code == 0, err
    first, again = read_evaluation(folder), read_evaluation(tmp_path / "again")
    assert again.trees and again.n == first.n == 60
    assert again.macro_f1 == pytest.approx(first.macro_f1) and again.confusion == first.confusion
    # the re-evaluated trees carry their fit's cost (trees.json) into metrics.json, for the report's training cost
    from korllama.cost import training_cost

    fit = json.loads((folder / "trees.json").read_text("utf-8"))["fit_cpu_seconds"]
    assert fit > 0 and again.fit_cpu_seconds == fit and training_cost(again).minutes == pytest.approx(fit / 60)
    code, _, err = cli("evaluate", folder, "--data", data, "--mode", "generate", "--out", tmp_path / "gen")
    assert code == 2 and "--mode generate does not apply" in err


def test_explain_explains_the_tuned_trees(fitted, cli):
    folder, data = fitted
    ids = split(read_table(data), 0.2, 0, 0.1).test.ids.iloc[:3].tolist()
    args = ["explain", folder, "--data", data]
    code, out, err = cli(*args, *sum((["--id", i] for i in ids), []), "--out", folder)  # beside its evaluation
    assert code == 0, err
    reasons = pd.read_csv(folder / "reasons.csv", dtype={"id": str})
    scored = pd.read_csv(folder / "predictions.csv", dtype={"ID": str}).set_index("ID")
    for row in ids:  # the explained probability is the tuned trees' own, as the baseline scored the row
        first = reasons[reasons["id"] == row].iloc[0]
        assert first["probability"] == pytest.approx(scored.loc[row, f"P_{first['label']}"], abs=1e-6)
    # an untuned model (what `explain --baseline` used to explain) gives other probabilities on the same rows
    trees = Trees.load(folder)
    table = read_table(data)
    rows = table.subset(np.flatnonzero(table.ids.isin(ids).to_numpy()))
    untuned = TreeBaseline().fit(split(table, 0.2, 0, 0.1).train).predict_proba(rows)
    assert np.abs(untuned - trees.predict_proba(rows)).max() > 1e-3
    assert explain(trees.predict_proba, rows, trees.fields, trees.references, trees.classes).proba == \
        pytest.approx(trees.predict_proba(rows))


def test_serve_grades_with_the_trees(fitted):
    from korllama.serve import create_app

    folder, data = fitted
    trees = Trees.load(folder)
    row = pd.read_csv(data, dtype=str, keep_default_na=False).iloc[0]
    applicant = {k: v for k, v in row.items() if k != "대출등급"}
    with TestClient(create_app(trees), base_url="http://localhost") as client:
        graded = client.post("/v1/grade", json=applicant)
        assert graded.status_code == 200, graded.text
        body = graded.json()
        expected = trees.predict_proba(read_table(data).subset([0]))[0]
        assert [body["probabilities"][c] for c in trees.classes] == pytest.approx(expected.tolist())
        why = client.post("/v1/grade?explain=true&top=2", json=applicant).json()
        assert len(why["reasons"]) == 2
        health = client.get("/health").json()
        assert health["model"] == "trees (LightGBM)" and health["run"] == folder.name
        panel = client.get("/page/run").json()
        assert panel["base"] == "trees (LightGBM)" and panel["metrics"]["macro_f1"] == pytest.approx(
            read_evaluation(folder).macro_f1)


def test_a_baseline_folder_is_not_another_command_s_output(fitted, cli, tmp_path):
    folder, data = fitted
    code, _, err = cli("evaluate", folder, "--data", data, "--out", folder, "--overwrite")
    assert code == 2 and "holds a tree baseline" in err, err
    assert (folder / "trees.json").is_file() and (folder / "decision.json").is_file()
    code, _, err = cli("predict", folder, "--base", "x", "--data", data, "--out", tmp_path / "p.csv")
    assert code == 2 and "leave out --base" in err


def test_damaged_trees_are_refused(fitted, cli, tmp_path):
    import shutil

    folder, data = fitted
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    part = copy / "trees" / "part-0.txt"
    part.write_text(part.read_text("utf-8").replace("Tree=0", "Tree=0 "), "utf-8")
    code, _, err = cli("predict", copy, "--data", data, "--out", tmp_path / "p.csv")
    assert code == 2 and "part-0.txt is not the file" in err, err
    assert not (tmp_path / "p.csv").exists()
    (copy / "trees" / "hack.py").write_text("print('no')", "utf-8")
    code, _, err = cli("predict", copy, "--data", data, "--out", tmp_path / "p.csv")
    assert code == 2 and "never runs code" in err, err


def test_references_are_the_fitting_rows(fitted):
    folder, data = fitted
    fit_on = split(read_table(data), 0.2, 0, 0.1).train
    assert Trees.load(folder).references == json.loads(json.dumps(reference_values(fit_on)))


def test_baseline_overwrite_replaces_its_own_trees_but_never_a_users_file(fitted, cli, tmp_path):
    import shutil

    folder, data = fitted
    copy = shutil.copytree(folder, tmp_path / "B")
    (copy / "trees" / "notes.txt").write_text("mine", "utf-8")
    code, _, err = cli("baseline", "--train", data, "--budget", "0", "--out", copy, "--overwrite")
    assert code == 2 and "trees/notes.txt" in err and (copy / "trees" / "notes.txt").read_text("utf-8") == "mine"
    (copy / "trees" / "notes.txt").unlink()
    (copy / "trees" / "part-9.txt").write_text("stale", "utf-8")  # korllama's own (recorded) file, stale
    manifest = json.loads((copy / ".korllama-manifest.json").read_text("utf-8"))
    manifest["files"].append("trees/part-9.txt")
    (copy / ".korllama-manifest.json").write_text(json.dumps(manifest), "utf-8")
    code, _, err = cli("baseline", "--train", data, "--budget", "0", "--out", copy, "--overwrite")
    assert code == 0, err
    assert not (copy / "trees" / "part-9.txt").exists()  # no old part beside the new ones
    code, _, err = cli("predict", copy, "--data", data, "--out", tmp_path / "p.csv")
    assert code == 0, err
