"""Tests for korllama.verdict: the report's opening verdict (the pick, by how much with a paired bootstrap interval,
what each system costs) and the systems it leaves apart because they were scored on other rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from test_report import CLASSES, evaluation

from korllama.evaluation import read_evaluation
from korllama.verdict import MIN_SHARED, paired_bootstrap, row_groups, scored, verdict


def frame(truth, pred) -> pd.DataFrame:
    return pd.DataFrame({"ID": [f"R{i}" for i in range(len(truth))], "truth": truth, "prediction": pred})


def test_the_bootstrap_is_paired_seeded_and_agrees_with_scikit_learn():
    rng = np.random.default_rng(1)
    truth = [CLASSES[i] for i in rng.integers(0, 7, 300)]
    a = [t if rng.random() < 0.8 else "A" for t in truth]
    b = [t if rng.random() < 0.6 else "" for t in truth]  # "" : an invalid answer, wrong for every label
    d = paired_bootstrap(frame(truth, a), frame(truth, b), CLASSES)
    assert d.rows == 300
    assert d.a == pytest.approx(f1_score(truth, a, labels=CLASSES, average="macro", zero_division=0))
    assert d.b == pytest.approx(f1_score(truth, b, labels=CLASSES, average="macro", zero_division=0))
    assert d.low < d.diff < d.high and d.clear  # 0.8 against 0.6 of the rows right: told apart
    assert paired_bootstrap(frame(truth, a), frame(truth, b), CLASSES) == d  # seeded: the same page each time
    same = paired_bootstrap(frame(truth, a), frame(truth, a), CLASSES)
    assert same.low == same.high == 0 and not same.clear
    # only the rows both scored count: a row of another table (same ID, other truth) is not paired
    other = frame(truth, a)
    other.loc[0, "truth"] = "G" if truth[0] != "G" else "A"
    assert paired_bootstrap(other, frame(truth, b), CLASSES).rows == 299
    few = paired_bootstrap(frame(truth[:MIN_SHARED - 1], a[:MIN_SHARED - 1]), frame(truth, b), CLASSES)
    assert few.rows == MIN_SHARED - 1 and few.low is None and not few.clear  # too few rows for an interval


def test_row_groups_put_the_most_systems_first():
    x, y = frozenset({1, 2, 3}), frozenset({1})
    assert row_groups([y, x, x, None]) == [[1, 2], [0], [3]]
    assert row_groups([y, x]) == [[1], [0]]  # as many systems: the more rows


def test_the_verdict_names_the_pick_and_what_each_costs(tmp_path):
    folders = [tmp_path / n for n in ("weak", "strong", "trees", "sample")]
    evaluation(folders[0], "weak", 0.3, seed=1)
    evaluation(folders[1], "strong", 0.95, seed=2)
    evaluation(folders[2], "trees", 0.6, seed=3, proba=False)
    evaluation(folders[3], "sample", 0.7, seed=4, rows=100)
    evals = [read_evaluation(f) for f in folders]
    evals[2].fit_cpu_seconds = 90.0
    found = verdict(folders, evals)
    assert found["groups"] == [[0, 1, 2], [3]]
    assert found["headline"].startswith(f"strong grades best on the 140 rows 3 systems share: macro-F1 "
                                         f"{evals[1].macro_f1:.3f}, +")
    assert "over trees" in found["headline"] and "95% interval" in found["headline"]
    assert found["pick"].startswith("Pick strong: every other system here is below it")
    lines = {s["system"]: s for s in found["lines"]}
    assert [s["system"] for s in found["lines"]] == ["strong", "trees", "weak"]  # best first
    assert lines["strong"]["gap"] == "highest" and not lines["strong"]["below"]
    assert lines["trees"]["gap"].startswith("\u2212") and lines["trees"]["below"]  # below the pick, told apart
    assert lines["trees"]["cost"] == "1.5 CPU min" and lines["trees"]["speed"] == "123 rows/s"
    assert lines["weak"]["cost"] == "not recorded"
    (apart,) = found["apart"]
    assert apart["systems"] == "sample" and apart["why"] == "100 rows, a sample of the verdict's rows"
    assert "on the 100 rows it shares with strong" in apart["words"]


def test_when_the_rows_cannot_tell_two_systems_apart_the_cheaper_is_named(tmp_path):
    llm, trees = tmp_path / "llm", tmp_path / "trees"
    evaluation(llm, "llm", 0.8, seed=7)
    evaluation(trees, "trees", 0.8, seed=7, proba=False)  # the same answers: no difference at all
    evals = [read_evaluation(f) for f in (llm, trees)]
    evals[1].fit_cpu_seconds = 12.0
    found = verdict([llm, trees], evals)
    assert "llm scores highest, but the rows cannot tell it from trees" in found["pick"]
    assert ("Pick trees if cost matters: 0.2 CPU min to train, 123 rows/s; llm: no recorded training cost"
            in found["pick"])


def test_a_single_system_is_a_verdict_of_one(tmp_path):
    evaluation(tmp_path / "one", "one", 0.8, seed=1)
    found = verdict([tmp_path / "one"], [read_evaluation(tmp_path / "one")])
    assert found["headline"].startswith("one: macro-F1") and "nothing to set it against" in found["headline"]
    assert found["apart"] == [] and scored(tmp_path / "nowhere") is None
