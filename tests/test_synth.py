"""Tests for the synthetic loan-grade generator: determinism, raw formats and the grade structure."""

import numpy as np
import pandas as pd
import pytest
from fixtures import REAL_MEDIAN_RATE

from korllama.features import implied_annual_rate
from korllama.synth import COLUMNS, synthesize

HEADERS = [
    "ID", "대출금액", "대출기간", "근로기간", "주택소유상태", "연간소득", "부채_대비_소득_비율", "총계좌수",
    "대출목적", "최근_2년간_연체_횟수", "총상환원금", "총상환이자", "총연체금액", "연체계좌수", "대출등급",
]
PURPOSES = {"부채 통합", "신용 카드", "주택 개선", "기타", "주요 구매", "의료", "자동차", "소규모 사업", "이사", "휴가",
            "주택", "재생 에너지"}
# grade shares and per-grade median implied annual rate measured on the real train.csv
REAL_SHARE = {"A": 0.174, "B": 0.298, "C": 0.286, "D": 0.140, "E": 0.077, "F": 0.020, "G": 0.004}


@pytest.fixture(scope="module")
def big():
    return synthesize(20000, seed=0)


@pytest.fixture(scope="module")
def small():
    return synthesize(5000, seed=0)


def test_same_seed_same_frame_other_seed_differs():
    a, b, c = synthesize(2000, seed=7), synthesize(2000, seed=7), synthesize(2000, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert (a["대출금액"].to_numpy() != c["대출금액"].to_numpy()).any()


def test_exact_headers_and_length(small):
    assert list(small.columns) == HEADERS
    assert COLUMNS == HEADERS
    assert len(small) == 5000


def test_ids_unique_and_formatted(small):
    assert small["ID"].is_unique
    assert small["ID"].iloc[0] == "SYN_00000"
    assert small["ID"].str.fullmatch(r"SYN_\d{5}").all()


def test_raw_formats(small):
    assert set(small["대출기간"]) == {" 36 months", " 60 months"}
    assert set(small["주택소유상태"]) <= {"MORTGAGE", "RENT", "OWN", "ANY"}
    assert set(small["대출목적"]) <= PURPOSES
    assert {"부채 통합", "신용 카드"} <= set(small["대출목적"])
    assert set(small["대출등급"]) == set("ABCDEFG")
    for col in ["대출금액", "연간소득", "총계좌수", "최근_2년간_연체_횟수", "총상환원금"]:
        assert pd.api.types.is_integer_dtype(small[col]), col
    for col in ["부채_대비_소득_비율", "총상환이자", "총연체금액", "연체계좌수"]:
        assert pd.api.types.is_float_dtype(small[col]), col
    dti = small["부채_대비_소득_비율"].to_numpy()
    assert np.allclose(dti, np.round(dti, 2))
    assert (small["대출금액"] % 30000 == 0).all()  # KRW at 1,200 per USD, as in the real file
    assert (small["총상환원금"] % 12 == 0).all() and (small["총상환이자"] % 12 == 0).all()


def test_quirky_employment_strings_present(small):
    values = set(small["근로기간"])
    for quirk in ["10+ years", "10+years", "< 1 year", "<1 year", "1 year", "1 years", "3", "Unknown", "5 years"]:
        assert quirk in values, quirk


def test_no_negative_amounts_and_repaid_within_loan(big):
    money = ["대출금액", "연간소득", "부채_대비_소득_비율", "총계좌수", "최근_2년간_연체_횟수", "총상환원금",
             "총상환이자", "총연체금액", "연체계좌수"]
    assert (big[money] >= 0).all().all()
    assert (big["총상환원금"] <= big["대출금액"]).all()
    unpaid = big["총상환원금"] == 0
    assert 0.03 < unpaid.mean() < 0.08  # about 5.6% in the real data
    assert (big.loc[unpaid, "총상환이자"] == 0.0).all()


def test_grade_shares_roughly_real(big):
    shares = big["대출등급"].value_counts(normalize=True)
    for grade, real in REAL_SHARE.items():
        assert abs(shares[grade] - real) < 0.015, grade


def test_term_share_rises_with_grade(big):
    long_share = (big["대출기간"] == " 60 months").groupby(big["대출등급"]).mean()
    assert long_share["A"] < 0.12 and long_share["E"] > 0.6
    assert long_share["A"] < long_share["C"] < long_share["E"]


def test_implied_rate_medians_increase_and_match_real(big):
    months = big["대출기간"].str.strip().str.split().str[0].astype(float)
    rate = implied_annual_rate(big["대출금액"], months, big["총상환원금"], big["총상환이자"])
    medians = pd.Series(rate).groupby(big["대출등급"].to_numpy()).median()
    assert list(medians.index) == list("ABCDEFG")
    assert (np.diff(medians.to_numpy()) > 0).all(), medians
    for grade, real in REAL_MEDIAN_RATE.items():
        assert abs(medians[grade] - real) < 0.005, (grade, medians[grade])
