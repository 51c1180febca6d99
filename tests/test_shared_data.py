"""Integration: the real Dacon loan files from ../shared (CI has them beside the checkout; skipped only if absent)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import SHARED_DATA
from fixtures import REAL_MEDIAN_RATE

from korllama.data import DataWarning, read_table

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")

GRADE_COUNTS = {"A": 13402, "B": 22990, "C": 22043, "D": 10769, "E": 5928, "F": 1565, "G": 338}


def _read(name: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = read_table(SHARED_DATA / name)
    return table, [w for w in caught if issubclass(w.category, DataWarning)]


@pytest.fixture(scope="module")
def train():
    return _read("train.csv")


@pytest.fixture(scope="module")
def test():
    return _read("test.csv")


def test_train_rows_grades_and_no_warning(train):
    table, caught = train
    assert len(table) == 77_035
    assert table.labels.value_counts().to_dict() == GRADE_COUNTS
    assert caught == [] and table.warnings == []
    assert table.ids.is_unique


def test_train_quirks_are_cleaned(train):
    f = train[0].frame
    assert set(f["term"].unique()) == {36, 60}
    assert f["employment_length"].dropna().between(0, 10).all()
    assert f["employment_length"].isna().sum() > 4000  # 'Unknown' rows
    assert set(f["home_ownership"]) <= {"MORTGAGE", "RENT", "OWN", "ANY"}
    assert len(set(f["purpose"])) == 12 and "debt consolidation" in set(f["purpose"])
    assert f["debt_to_income"].max() == 9999 and f["annual_income"].min() == 0


def test_median_implied_rate_rises_with_grade(train):
    f = train[0].frame
    medians = f.groupby("grade")["implied_rate"].median().reindex(list("ABCDEFG"))
    assert (np.diff(medians.to_numpy()) > 0).all(), medians.to_dict()
    for grade, rate in REAL_MEDIAN_RATE.items():
        assert medians[grade] == pytest.approx(rate, abs=0.002), grade
    unpaid = f["principal_repaid"] == 0
    assert unpaid.any() and f.loc[unpaid, "implied_rate"].isna().all()


def test_test_csv_rows_and_one_wedding_warning(test):
    table, caught = test
    assert len(table) == 64_197
    assert not table.has_labels
    assert len(caught) == 1 and "wedding" in str(caught[0].message) and "'other'" in str(caught[0].message)
    assert len(table.warnings) == 1
    assert "wedding" not in set(table.frame["purpose"])
    first = table.frame.iloc[0]
    assert first["id"] == "TEST_00000" and first["purpose"] == "housing improvement" and first["term"] == 36


@pytest.mark.parametrize("name,rows", [("train.csv", "77,035"), ("test.csv", "64,197")])
def test_data_check_passes_via_the_cli(cli, name, rows):
    code, out, err = cli("data", "check", SHARED_DATA / name)
    assert code == 0, err
    assert f"{name}: {rows} rows, valid for spec loan" in out
    assert ("wedding" in err) == (name == "test.csv")
    assert "error" not in err
