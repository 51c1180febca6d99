"""Tests for korllama.decision: per-class weights for macro-F1, fitted on validation rows only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from korllama.decision import DecisionRule, argmax_rule, fit_decision, macro_f1_codes
from korllama.errors import KorllamaError

CLASSES = list("ABC")


def rare_class_rows(n: int, seed: int):
    """Rows of 3 classes, C rare (3%), with probabilities that under-call C: argmax rarely predicts it."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n, p=[0.57, 0.40, 0.03])
    logits = rng.normal(0, 1.0, size=(n, 3))
    logits[np.arange(n), truth] += 1.8
    logits[:, 2] -= 3.0  # a model that learned C is rare and shrinks it too much
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = [f"R{seed}_{i}" for i in range(n)]
    return proba, np.asarray(CLASSES, dtype=object)[truth], ids


def macro(truth, pred):
    return f1_score(truth, pred, labels=CLASSES, average="macro", zero_division=0)


def test_fitted_weights_raise_macro_f1_on_validation_and_on_new_rows():
    proba, truth, ids = rare_class_rows(3000, seed=0)
    rule = fit_decision(proba, truth, CLASSES, ids=ids)
    plain = np.asarray(CLASSES, dtype=object)[proba.argmax(axis=1)]
    assert macro(truth, rule.apply(proba)) > macro(truth, plain) + 0.03
    assert rule.weights[2] == max(rule.weights) and rule.weights[2] > rule.weights[0]  # C up-weighted
    assert rule.cross_checked_gain > 0.02  # and the gain held on rows left out of the fit
    assert rule.valid_macro_f1["decision"] == pytest.approx(macro(truth, rule.apply(proba)))
    assert rule.valid_macro_f1["argmax"] == pytest.approx(macro(truth, plain))
    # the weights carry over to rows they were not fitted on (same distribution)
    new_proba, new_truth, _ = rare_class_rows(3000, seed=1)
    new_plain = np.asarray(CLASSES, dtype=object)[new_proba.argmax(axis=1)]
    assert macro(new_truth, rule.apply(new_proba)) > macro(new_truth, new_plain) + 0.02


def test_never_worse_than_argmax_on_its_rows_and_all_ones_is_argmax():
    proba, truth, _ = rare_class_rows(1500, seed=3)
    rule = fit_decision(proba, truth, CLASSES)
    plain = argmax_rule(CLASSES).apply(proba)
    assert list(plain) == [CLASSES[i] for i in proba.argmax(axis=1)]
    assert macro(truth, rule.apply(proba)) >= macro(truth, plain)


def test_fast_macro_f1_equals_scikit_learn():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 5, 400), rng.integers(0, 5, 400)
    pred[pred == 4] = 3  # a class never predicted
    expected = f1_score(truth, pred, labels=range(5), average="macro", zero_division=0)
    assert macro_f1_codes(truth, pred, 5) == pytest.approx(expected)


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    proba, truth, ids = rare_class_rows(1000, seed=4)
    rule = fit_decision(proba, truth, CLASSES, ids=ids)
    path = rule.save(tmp_path)  # a folder: FOLDER/decision.json
    assert path == tmp_path / "decision.json"
    on_disk = json.loads(path.read_text("utf-8"))
    assert on_disk["rule"] == "macro-f1" and on_disk["classes"] == CLASSES and on_disk["fitted_rows"] == 1000
    again = DecisionRule.load(tmp_path)
    assert again == rule
    new_proba, _, _ = rare_class_rows(2000, seed=5)
    assert list(again.apply(new_proba)) == list(rule.apply(new_proba))
    assert list(DecisionRule.load(path).apply(new_proba)) == list(rule.apply(new_proba))


def test_load_and_apply_refuse_what_does_not_fit(tmp_path):
    with pytest.raises(KorllamaError, match="no decision rule"):
        DecisionRule.load(tmp_path)
    (tmp_path / "decision.json").write_text("{}")
    with pytest.raises(KorllamaError, match="not a decision rule"):
        DecisionRule.load(tmp_path)
    with pytest.raises(KorllamaError, match="3 classes"):
        argmax_rule(CLASSES).apply(np.ones((4, 7)))
    with pytest.raises(KorllamaError, match="none"):
        fit_decision(np.ones((0, 3)), [], CLASSES)


def test_the_rule_refuses_to_be_judged_on_its_own_rows():
    proba, truth, ids = rare_class_rows(600, seed=6)
    fit_ids, scored_ids = ids[:300], ids[300:]
    rule = fit_decision(proba[:300], truth[:300], CLASSES, ids=fit_ids)
    rule.check_unseen(scored_ids)  # disjoint: fine
    with pytest.raises(KorllamaError, match="fitted on 1 of the rows"):
        rule.check_unseen([*scored_ids, fit_ids[7]])


def test_weights_that_only_fit_noise_are_dropped_by_the_cross_check():
    """Balanced classes and probabilities with no bias to correct: weights fitted on 4/5 of the rows do not beat
    argmax on the fifth left out, so the rule stays argmax (and says by how much the weights lost)."""
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    noisy = np.where(rng.random(n) < 0.6, y, rng.integers(0, 3, n))
    proba = 0.5 * rng.dirichlet([1, 1, 1], n) + 0.5 * np.eye(3)[noisy]
    truth = np.asarray(CLASSES, dtype=object)[y]
    rule = fit_decision(proba, truth, CLASSES)
    assert rule.cross_checked_gain < 0 and rule.weights == [1.0, 1.0, 1.0]
    unchecked = fit_decision(proba, truth, CLASSES, folds=0)  # without the check it fits the noise
    assert unchecked.cross_checked_gain is None and unchecked.weights != [1.0, 1.0, 1.0]
    assert unchecked.valid_macro_f1["decision"] > rule.valid_macro_f1["decision"]


def test_a_class_with_too_few_fitting_rows_keeps_the_rule_at_argmax():
    """On 300 rows a 3% class has ~9 rows: one more of them right moves macro-F1 by points, so weights fitted
    there fit noise; the rule stays argmax and says why, while enough rows of every class give it weights."""
    proba, truth, ids = rare_class_rows(300, seed=0)
    assert (truth == "C").sum() < 20
    few = fit_decision(proba, truth, CLASSES, ids=ids, folds=1)
    assert few.weights == [1.0, 1.0, 1.0] and few.cross_checked_gain is None
    assert few.argmax_kept == f"class C has {(truth == 'C').sum()} of the 300 validation rows, fewer than 20"
    assert DecisionRule.from_dict(few.to_dict()) == few
    loose = fit_decision(proba, truth, CLASSES, ids=ids, folds=1, min_class_rows=1)
    assert loose.weights != [1.0, 1.0, 1.0] and loose.argmax_kept is None
    many = fit_decision(*rare_class_rows(3000, seed=0)[:2], CLASSES)
    assert many.argmax_kept is None and many.weights[2] == max(many.weights)
