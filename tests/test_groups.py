"""Tests for korllama.groups: group metrics (through fairlearn's MetricFrame) partition the rows and give the same
figures as computing each group by hand, the gaps in words, and the group columns' round trip through
predictions.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from korllama.evaluation import metrics, write_evaluation
from korllama.groups import evaluation_groups, group_columns, group_gaps, group_metrics, groups_of, read_group_columns
from korllama.synth import synthetic_table

CLASSES = ["low", "mid", "high"]


def test_group_metrics_add_up_and_a_one_label_group_is_reported():
    rng = np.random.default_rng(1)
    n = 200
    features = pd.DataFrame({"kind": rng.choice(["a", "b", "c"], n).astype(object),
                             "amount": rng.lognormal(10, 1, n), "few": rng.choice([36.0, 60.0], n)})
    features.loc[:9, "amount"] = np.nan
    truth = rng.choice(["low", "mid", "high"], n).astype(object)
    features.loc[truth == "high", "kind"] = "only-high"  # a group whose every row has one label
    features.loc[np.flatnonzero(truth != "high")[:5], "kind"] = None
    pred = np.where(rng.random(n) < 0.7, truth, "low").astype(object)
    kinds = {"kind": "category", "amount": "number", "few": "number"}
    groups = group_metrics(features, kinds, truth, pred, ["low", "mid", "high"], rng.random(n))
    for column in kinds:
        assert groups.loc[groups["column"] == column, "rows"].sum() == n  # groups partition the rows
    one = groups[(groups["column"] == "kind") & (groups["group"] == "only-high")].iloc[0]
    assert one["rows"] == (truth == "high").sum()
    assert one["true_share_high"] == 1.0 and 0 <= one.macro_f1 <= 1
    assert one.accuracy == pytest.approx((pred[truth == "high"] == "high").mean())
    amount = groups[groups["column"] == "amount"]
    assert list(amount["group"].str[:3]) == ["Q1:", "Q2:", "Q3:", "Q4:", "mis"]  # quartiles in order, missing last
    assert set(groups.loc[groups["column"] == "few", "group"]) == {"36", "60"}  # few values: by value
    assert "missing" in set(groups.loc[groups["column"] == "kind", "group"])
    shares = groups[[f"share_{c}" for c in ["low", "mid", "high"]]].sum(axis=1)
    assert np.allclose(shares, 1)
    words = group_gaps(groups, ["low", "mid", "high"], min_rows=20)
    assert words and any("a gap of" in w for w in words)
    assert any("of its answers and" in w for w in words)
    # a bias the whole system has is not a group's: two groups alike, every answer "low", no share sentence
    truth = np.tile(np.array(["low", "mid", "high"] * 20, dtype=object), 2)
    alike = group_metrics(pd.DataFrame({"kind": ["a"] * 60 + ["b"] * 60}), {"kind": "category"}, truth,
                          np.full(120, "low", dtype=object), ["low", "mid", "high"])
    assert alike["share_low"].tolist() == [1.0, 1.0]
    assert not any("of its answers" in w for w in group_gaps(alike, ["low", "mid", "high"]))
    assert group_gaps(groups, ["low", "mid", "high"], min_rows=10_000) == []  # nothing big enough: nothing said


def test_group_metrics_equal_each_group_computed_by_hand():
    rng = np.random.default_rng(3)
    n = 300
    features = pd.DataFrame({"amount": rng.lognormal(10, 1, n), "kind": rng.choice(["a", "b"], n).astype(object)})
    truth = rng.choice(CLASSES, n).astype(object)
    pred = np.where(rng.random(n) < 0.6, truth, rng.choice(CLASSES + [""], n)).astype(object)  # "": invalid answers
    top = rng.random(n)
    kinds = {"amount": "number", "kind": "category"}
    groups = group_metrics(features, kinds, truth, pred, CLASSES, top)
    for _, line in groups.iterrows():
        mask = (groups_of(features[line["column"]], kinds[line["column"]]) == line["group"]).to_numpy()
        t, p = truth[mask], pred[mask]
        present = [c for c in CLASSES if c in set(t) or c in set(p)]
        assert line["rows"] == mask.sum()
        assert line["macro_f1"] == float(f1_score(t, p, labels=present, average="macro", zero_division=0))
        assert line["accuracy"] == float((t == p).mean())  # an invalid answer is wrong, never a label
        assert line["mean_top_probability"] == float(top[mask].mean())
        for c in CLASSES:
            assert line[f"share_{c}"] == float((p == c).mean()) and line[f"true_share_{c}"] == float((t == c).mean())
    no_proba = group_metrics(features, kinds, truth, pred, CLASSES)
    assert no_proba["mean_top_probability"].isna().all()
    assert group_metrics(features.head(0), kinds, truth[:0], pred[:0], CLASSES).empty  # no rows: no groups


def test_group_columns_survive_predictions_csv_and_give_the_same_groups(tmp_path):
    table = synthetic_table(300, 2)
    classes = table.spec.label.classes
    columns, kinds = group_columns(table)
    assert set(kinds) == {c.alias for c in table.spec.columns} and kinds["home_ownership"] == "category"
    truth = table.labels.tolist()
    pred = [classes[(classes.index(t) + (i % 3 == 0)) % len(classes)] for i, t in enumerate(truth)]
    proba = np.full((len(table), len(classes)), 1 / len(classes))
    result = metrics(truth, pred, classes, proba)
    result.group_columns = kinds
    write_evaluation(tmp_path, result, [str(i) for i in table.ids], truth, pred, proba, classes, extra_columns=columns)
    read = evaluation_groups(tmp_path, result)
    direct = group_metrics(table.frame, kinds, truth, pred, classes, proba.max(axis=1))
    pd.testing.assert_frame_equal(read, direct)
    typed = read_group_columns(pd.read_csv(tmp_path / "predictions.csv", dtype=str, keep_default_na=False), kinds)
    assert pd.api.types.is_numeric_dtype(typed["loan_amount"])
    assert not pd.api.types.is_numeric_dtype(typed["home_ownership"])
    before_groups = result.model_copy(update={"group_columns": {}})  # an evaluation from before groups
    assert evaluation_groups(tmp_path, before_groups) is None


@pytest.mark.parametrize("values,kind,names", [
    ([36.0, 60.0, 36.0, None], "number", ["36", "60", "36", "missing"]),
    ([0] * 6 + [1, 2, 3, 4, 5, 6], "number", ["0"] * 6 + ["1 to 2"] * 2 + ["3 to 4"] * 2 + ["5 to 6"] * 2),  # half 0s
    (list(range(1, 9)), "number", ["Q1: 1 to 2", "Q1: 1 to 2", "Q2: 3 to 4", "Q2: 3 to 4", "Q3: 5 to 6",
                                   "Q3: 5 to 6", "Q4: 7 to 8", "Q4: 7 to 8"]),
    (["x", None], "category", ["x", "missing"]),
])
def test_groups_of_names_values_quartiles_and_missing(values, kind, names):
    assert groups_of(pd.Series(values, dtype=object if kind == "category" else float), kind).tolist() == names
