"""Tests for korllama.baseline: TreeBaseline as a scikit-learn estimator (sklearn's own estimator checks),
table_features and the TableFeatures Pipeline step, refit, the bounded search.

Synthetic loan tables (korllama.synth), few small trees, one thread: seconds on a busy 2-core CPU.
"""

from __future__ import annotations

import pickle
from inspect import signature

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from korllama.baseline import TableFeatures, TreeBaseline, refit_on_all, search, table_features
from korllama.data import split
from korllama.synth import synthetic_table

CLASSES = list("ABCDEFG")
FAST = dict(n_estimators=60, num_leaves=15, max_bin=255, n_jobs=1, early_stopping_rounds=10)


@pytest.fixture(scope="module")
def loans():
    return synthetic_table(1500, seed=4)


@parametrize_with_checks([TreeBaseline(n_estimators=20, n_jobs=1)])
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    # sklearn runs its array-API check (for an estimator without array-API support: dispatch on, NumPy in, the
    # same results out) only when this is set; it is read when the check runs
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


def test_what_the_checks_do_not_ask_missing_values_yes_inf_no():
    # allow_nan=True (LightGBM routes missing values) makes sklearn drop its NaN/inf check: inf is still refused
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.repeat([0, 1], 30)
    X[:, 0] += y * 3
    with_nan = X.copy()
    with_nan[::7, 1] = np.nan
    model = TreeBaseline(**FAST, min_child_samples=2).fit(with_nan, y)
    assert (model.predict(with_nan) == y).mean() > 0.9
    with pytest.raises(NotFittedError):
        TreeBaseline().predict_proba(X)
    X[0, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        TreeBaseline(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="infinity"):
        model.predict(X)
    frame = pd.DataFrame({"kind": ["a", "b"] * 30, "x": X[:, 2]})  # a frame with categories: its numbers too
    with pytest.raises(ValueError, match="infinity"):
        TreeBaseline(**FAST).fit(frame, y)
    with pytest.raises(ValueError, match="1 class"):
        TreeBaseline(**FAST).fit(with_nan, np.zeros(60))


def test_table_features_step_in_a_pipeline_gives_what_fit_on_a_table_gives(loans):
    fit_on, score_on, _ = split(loans, 0.2, 0)
    pipe = make_pipeline(TableFeatures(), TreeBaseline(**FAST, classes=CLASSES)).fit(fit_on, fit_on.labels)
    direct = TreeBaseline(**FAST).fit(fit_on)
    np.testing.assert_allclose(pipe.predict_proba(score_on), direct.predict_proba(score_on))
    names = list(pipe[0].get_feature_names_out())
    assert names == list(table_features(fit_on).columns) == list(pipe[-1].feature_names_in_)
    assert pipe[-1].n_features_in_ == len(names) and set(pipe[-1].categories_) == {"home_ownership", "purpose"}
    with pytest.raises(TypeError, match="korllama Table"):
        TableFeatures().fit(table_features(fit_on))


def test_progress_is_a_setting_called_every_round_and_clone_keeps_it(loans):
    rounds = []

    def advance(n):
        rounds.append(n)

    model = TreeBaseline(**{**FAST, "validation_fraction": 0}, progress=advance)
    clone(model).fit(loans)  # a callback: a clone calls the same one
    assert rounds == [1] * FAST["n_estimators"]
    assert "progress" not in signature(TreeBaseline.fit).parameters


def test_clone_keeps_every_setting_and_no_fitted_state(loans):
    model = TreeBaseline(**FAST, learning_rate=0.1, seed=3)
    params = model.get_params()
    assert params["learning_rate"] == 0.1 and params["seed"] == 3 and params["num_leaves"] == 15
    fitted = model.fit(loans)
    copy = clone(fitted)
    assert copy.get_params() == params
    assert not hasattr(copy, "model_") and not hasattr(copy, "classes_")
    assert clone(copy.set_params(num_leaves=7)).num_leaves == 7


def test_table_features_are_the_columns_and_derived_features(loans):
    X = table_features(loans)
    spec = loans.spec
    assert list(X.columns) == [c.alias for c in spec.columns] + [d.alias for d in spec.derived]
    assert len(X) == len(loans) and "grade" not in X and "id" not in X
    assert X["purpose"].dtype == object and X["implied_rate"].dtype == float


def test_fit_on_x_and_y_and_on_a_table_agree(loans):
    fit_on, score_on, _ = split(loans, 0.2, 0)
    from_table = TreeBaseline(**FAST).fit(fit_on)
    from_xy = TreeBaseline(**FAST, classes=CLASSES).fit(table_features(fit_on), fit_on.labels.to_numpy())
    proba = from_table.predict_proba(score_on)
    assert proba.shape == (len(score_on), 7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(from_xy.predict_proba(table_features(score_on)), proba)
    assert list(from_table.classes_) == CLASSES
    pred = from_table.predict(score_on)
    assert list(pred) == [CLASSES[i] for i in proba.argmax(axis=1)]
    majority = fit_on.labels.value_counts().idxmax()
    floor = f1_score(score_on.labels, [majority] * len(score_on), labels=CLASSES, average="macro", zero_division=0)
    assert f1_score(score_on.labels, pred, labels=CLASSES, average="macro", zero_division=0) > floor + 0.3
    assert 0 < from_table.score(score_on, score_on.labels) <= 1  # ClassifierMixin.score: accuracy


def test_early_stopping_uses_an_inner_part_of_the_fitting_rows_only(loans):
    fit_on, score_on, _ = split(loans, 0.2, 0)
    model = TreeBaseline(**{**FAST, "n_estimators": 2000, "learning_rate": 0.3}).fit(fit_on)
    assert model.best_iteration_ < 2000  # it stopped
    n_valid = len(model.valid_index_)
    assert n_valid == pytest.approx(0.1 * len(fit_on), abs=2)
    assert set(model.valid_ids_) <= set(fit_on.ids) and not set(model.valid_ids_) & set(score_on.ids)
    assert model.valid_proba_.shape == (n_valid, 7)
    assert list(model.valid_labels_) == list(fit_on.labels.to_numpy()[model.valid_index_])
    plain = TreeBaseline(**{**FAST, "validation_fraction": 0}).fit(fit_on)
    assert plain.best_iteration_ == FAST["n_estimators"] and plain.valid_proba_ is None


def test_sklearn_x_with_plain_labels_and_unseen_categories():
    X = pd.DataFrame({"x": np.r_[np.zeros(60), np.ones(60)], "kind": ["a", "b"] * 60})
    y = np.where(X["x"] > 0, "hi", "lo")
    model = TreeBaseline(**{**FAST, "min_child_samples": 2}).fit(X, y)
    assert list(model.classes_) == ["hi", "lo"] and model.categories_ == {"kind": ["a", "b"]}
    new = pd.DataFrame({"x": [0.0, 1.0], "kind": ["zzz", None]})  # a category never seen: missing
    assert list(model.predict(new)) == ["lo", "hi"]


def test_search_says_and_returns_what_it_tried(loans):
    fit_on, _, _ = split(loans, 0.2, 0)
    lines = []
    tried = [{}, {"num_leaves": 7}, {"learning_rate": 0.2}]
    result = search(fit_on, base=TreeBaseline(**FAST), candidates=tried, budget_s=600, say=lines.append)
    assert [t["params"] for t in result.trials] == tried
    assert len(lines) == 3 and "num_leaves=7" in lines[1] and "inner-validation macro-F1" in lines[0]
    assert sum(t["kept"] for t in result.trials) == 1
    kept = next(t for t in result.trials if t["kept"])
    assert kept["valid_macro_f1"] == max(t["valid_macro_f1"] for t in result.trials)
    assert result.best.get_params()["num_leaves"] == {**FAST, **kept["params"]}["num_leaves"]
    assert all(t["seconds"] > 0 and t["iterations"] >= 1 for t in result.trials)
    assert result.best.progress is None  # the search's bar is not kept: the model pickles
    copy = pickle.loads(pickle.dumps(result.best))
    np.testing.assert_array_equal(copy.predict_proba(fit_on), result.best.predict_proba(fit_on))


def test_search_stops_at_its_budget(loans):
    lines = []
    result = search(loans, base=TreeBaseline(**FAST), candidates=[{}, {"num_leaves": 7}], budget_s=0,
                    say=lines.append)
    assert len(result.trials) == 1 and result.trials[0]["kept"]  # the first always runs
    assert "skipped 1 more" in lines[-1]


def test_without_a_budget_every_setting_is_tried_whatever_the_clock(loans, monkeypatch):
    """The default search does not depend on how fast the machine is now (issue 31): a clock that jumps an hour
    per reading still tries every setting, and the same search twice keeps the same trees."""
    import korllama.baseline.tune as tune

    ticks = iter(range(0, 10**7, 3600))
    monkeypatch.setattr(tune.time, "perf_counter", lambda: float(next(ticks)))
    tried = [{}, {"num_leaves": 7}, {"learning_rate": 0.2}]
    first = search(loans, base=TreeBaseline(**FAST), candidates=tried, say=lambda _: None)
    second = search(loans, base=TreeBaseline(**FAST), candidates=tried, say=lambda _: None)
    assert [t["params"] for t in first.trials] == tried
    np.testing.assert_array_equal(first.best.predict_proba(loans), second.best.predict_proba(loans))


def test_rows_missing_the_segment_feature_get_their_own_model():
    from korllama.baseline import defaults_for

    loans = synthetic_table(3000, seed=4)  # about 6% repaid nothing: enough rows for a model of their own
    settings = defaults_for(loans)
    assert settings["segment_on"] == "interest_per_principal"  # the first derived feature missing on >= 1%
    assert settings["fine_bins"]["schedule_rate"] == settings["fine_bins"]["implied_rate"] == 8191
    fit_on, score_on, _ = split(loans, 0.2, 0)
    model = TreeBaseline(**FAST, **settings, validation_fraction=0.2).fit(fit_on)
    assert set(model.models_) == {0, 1} and set(model.best_iterations_) == {0, 1}
    assert model.models_[1].get_params()["num_leaves"] == settings["segment_params"]["num_leaves"]
    assert len(model.models_[0].get_params()["max_bin_by_feature"]) == len(model.feature_names_)
    proba = model.predict_proba(score_on)
    missing = score_on.frame["interest_per_principal"].isna().to_numpy()
    assert missing.any() and (~missing).any()
    X = model._validate(score_on)[0]  # the frame the trees see
    np.testing.assert_allclose(proba[missing][:, model.models_[1].classes_],
                               model.models_[1].predict_proba(X[missing]))
    np.testing.assert_allclose(proba[~missing][:, model.models_[0].classes_],
                               model.models_[0].predict_proba(X[~missing]))
    few = TreeBaseline(**FAST, **settings).fit(fit_on.subset(fit_on.frame.index[:200]))  # too few: one model
    assert set(few.models_) == {0}


def test_refit_on_all_rows_keeps_the_rounds_per_row_and_the_inner_probabilities():
    from korllama.baseline import defaults_for

    loans = synthetic_table(3000, seed=4)
    fit_on, score_on, _ = split(loans, 0.2, 0)
    model = TreeBaseline(**{**FAST, "n_estimators": 2000, "learning_rate": 0.3}, **defaults_for(loans),
                         validation_fraction=0.2).fit(fit_on)
    stopped = dict(model.best_iterations_)
    fit_rows, valid_proba, before = dict(model.fit_rows_), model.valid_proba_.copy(), model.predict_proba(score_on)
    assert set(stopped) == {0, 1} and sum(fit_rows.values()) == len(fit_on) - len(model.valid_index_)
    refitted = refit_on_all(model, fit_on)
    assert refitted is not model and refitted.refit and not model.refit
    assert model.best_iterations_ == stopped and model.fit_rows_ == fit_rows  # the stopped model is unchanged
    np.testing.assert_array_equal(model.predict_proba(score_on), before)
    assert sum(refitted.fit_rows_.values()) == len(fit_on)  # the inner validation rows are trained on now
    for part, rounds in stopped.items():  # the rounds scale with the rows, and the refitted models have them
        assert refitted.best_iterations_[part] == max(1, round(rounds * refitted.fit_rows_[part] / fit_rows[part]))
        trees_per_round = len(refitted.models_[part].classes_)  # multiclass: one tree per class a round
        assert refitted.models_[part].booster_.num_trees() == refitted.best_iterations_[part] * trees_per_round
    np.testing.assert_array_equal(refitted.valid_proba_, valid_proba)  # the rule's rows: unseen by stopped models
    after = refitted.predict_proba(score_on)
    assert after.shape == before.shape and not np.allclose(after, before)
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-9)
    # the same as fit with refit=True: the function only spares fitting the early-stopped models twice
    in_fit = clone(model).set_params(refit=True).fit(fit_on)
    assert in_fit.best_iterations_ == refitted.best_iterations_
    np.testing.assert_allclose(in_fit.predict_proba(score_on), after)
    np.testing.assert_array_equal(in_fit.valid_proba_, valid_proba)
    with pytest.raises(ValueError, match="rows the model was fitted on"):
        refit_on_all(model, score_on)


@pytest.fixture
def fast_search(monkeypatch):
    import functools

    import korllama.baseline.tune

    monkeypatch.setattr(korllama.baseline.tune, "TreeBaseline", functools.partial(TreeBaseline, **FAST))
    monkeypatch.setattr(korllama.baseline.tune, "CANDIDATES", [{}, {"num_leaves": 7}])


def test_run_baseline_stores_a_decision_rule_fitted_on_inner_rows_only(fast_search, tmp_path):
    import json

    from korllama.baseline.command import run_baseline
    from korllama.decision import DecisionRule

    data = synthetic_table(1500, seed=5)
    result = run_baseline(data, None, tmp_path / "b", decision="macro-f1")
    fit_on, _, score_on = split(data, 0.2, 0, 0.1)  # fitted on the training rows, scored on the test rows
    rule = DecisionRule.load(tmp_path / "b")
    assert set(rule.fitted_ids) < set(fit_on.ids) and not set(rule.fitted_ids) & set(score_on.ids)
    assert rule.fitted_rows == len(rule.fitted_ids) == pytest.approx(0.1 * len(fit_on), abs=2)
    on_disk = json.loads((tmp_path / "b" / "metrics.json").read_text("utf-8"))
    assert on_disk["decision_rule"] == "macro-f1"
    side = on_disk["decision"]  # the same shape as an LLM run's evaluation
    assert side["rows"] == len(score_on) and side["left_out_fitting_rows"] == 0
    assert set(side["argmax"]) == set(side["macro-f1"]) == {"macro_f1", "accuracy"}
    assert side["weights"] == dict(zip(CLASSES, rule.weights))
    assert on_disk["macro_f1"] == pytest.approx(side["macro-f1"]["macro_f1"])  # the rule is the prediction
    assert [t["params"] for t in on_disk["search"]] == [{}, {"num_leaves": 7}]
    # what the fit cost, wall and CPU (process time, LightGBM's threads included), for compare's time to quality
    assert on_disk["fit_seconds"] > 0 and on_disk["fit_cpu_seconds"] > 0
    assert on_disk["fit_cpu_seconds"] == pytest.approx(result.fit_cpu_seconds)
    predictions = pd.read_csv(tmp_path / "b" / "predictions.csv", dtype={"ID": str})
    proba = predictions[[f"P_{c}" for c in CLASSES]].to_numpy()
    assert (predictions["prediction"] == rule.apply(proba)).mean() > 0.99  # (probabilities rounded to 6 places)
    assert result.decision.argmax.macro_f1 == side["argmax"]["macro_f1"]


def test_baseline_command_prints_both_rules_and_refuses_an_unknown_one(fast_search, cli, tmp_path):
    from korllama.synth import synthesize

    data = tmp_path / "train.csv"
    synthesize(800, seed=2).to_csv(data, index=False)
    code, out, err = cli("baseline", "--train", data, "--out", tmp_path / "b", "--budget", 0)
    assert code == 0, err
    text = " ".join(out.split())
    assert "baseline: macro-F1" in text and "argmax: macro-F1" in text and "decision rule" in text
    assert "[1/2] defaults" in " ".join(err.split()) and "skipped 1 more" in err  # budget 0: the first only
    assert (tmp_path / "b" / "decision.json").is_file()
    code, _, err = cli("baseline", "--train", data, "--out", tmp_path / "x", "--decision", "best")
    assert code == 2 and "--decision" in err and not (tmp_path / "x").exists()
