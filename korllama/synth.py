"""Synthetic Korean loan-grade table with the real file's headers and raw value formats.

Every figure below was fitted once on the Dacon loan-grade train.csv (77,035 rows, ../shared/data/dacon-loan)
and is carried here as a constant: the generator never reads the real data. The grade structure is built the way
it appears in the real table: grade -> annual interest rate (normal around the grade's median implied rate,
clipped) and term (grade-dependent 60-month share) -> a standard amortisation schedule, of which the borrower
has made k monthly payments (mostly 1..4, 5.6% none, a thin tail up to the term). Principal and interest repaid
follow from the schedule, so ``korllama.features.implied_annual_rate`` recovers the grade's rate. Money columns
are in KRW at 1,200 per USD, as in the real file: amounts are multiples of 30,000, repaid sums multiples of 12.
The other columns are drawn independently of each other (debt-to-income shifts mildly with grade, as in the data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from korllama.data import clean
from korllama.features import monthly_payment, principal_repaid
from korllama.spec import load_spec

COLUMNS = [
    "ID", "대출금액", "대출기간", "근로기간", "주택소유상태", "연간소득", "부채_대비_소득_비율", "총계좌수",
    "대출목적", "최근_2년간_연체_횟수", "총상환원금", "총상환이자", "총연체금액", "연체계좌수", "대출등급",
]

# --- fitted on train.csv ---------------------------------------------------------------------------------------
GRADES = np.array(list("ABCDEFG"))
GRADE_SHARE = np.array([0.17397, 0.29844, 0.28614, 0.13979, 0.07695, 0.02032, 0.00439])
RATE_MEDIAN = np.array([0.0675, 0.0959, 0.1265, 0.1620, 0.1827, 0.2251, 0.2650])  # implied annual rate
RATE_SD = np.array([0.0116, 0.0152, 0.0121, 0.0127, 0.0125, 0.0182, 0.0120])  # IQR / 1.349
SHARE_60_MONTHS = np.array([0.0502, 0.2071, 0.3905, 0.5159, 0.7443, 0.8709, 0.8609])
DTI_MEDIAN = np.array([16.15, 17.58, 19.51, 21.58, 21.96, 22.12, 21.24])  # debt-to-income %, per grade

KRW_PER_USD = 1200
# loan amount in USD: quantiles (piecewise-linear inverse CDF); 4.7% sit at the 35,000 cap
AMOUNT_Q = [0, .02, .05, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .9534, 1]
AMOUNT_USD = [1000, 2475, 3850, 5000, 7500, 10000, 12000, 14000, 16000, 20000, 23600, 28000, 33525, 35000, 35000]
AMOUNT_STEP_USD = ([1000, 100, 25], [0.68, 0.20, 0.12])  # amounts rounded to $1000 / $100 / $25
LOG_INCOME = (18.172, 0.497)  # log KRW annual income: median, IQR / 1.349; rounded to 12,000
LOG_ACCOUNTS = (3.178, 0.469)  # log total accounts: median, IQR / 1.349
DTI_SD = 9.5

EMPLOYMENT = {
    "10+ years": 0.32779, "2 years": 0.08804, "< 1 year": 0.08033, "3 years": 0.07889, "1 year": 0.06533,
    "5 years": 0.05909, "Unknown": 0.05857, "4 years": 0.05829, "8 years": 0.05018, "6 years": 0.04064,
    "7 years": 0.03950, "9 years": 0.03855, "10+years": 0.00958, "<1 year": 0.00375, "3": 0.00086,
    "1 years": 0.00061,
}
HOME = {"MORTGAGE": 0.49629, "RENT": 0.39261, "OWN": 0.11110}  # ANY does not occur in train.csv
PURPOSE = {
    "부채 통합": 0.57277, "신용 카드": 0.25505, "주택 개선": 0.06370, "기타": 0.04916, "주요 구매": 0.01847,
    "의료": 0.01067, "자동차": 0.00848, "소규모 사업": 0.00785, "이사": 0.00535, "휴가": 0.00475, "주택": 0.00314,
    "재생 에너지": 0.00061,
}
# delinquencies in the last 2 years: shares of 0..10 (the rest, 0.07%, spread over 11..18)
DELINQ_SHARE = [0.79302, 0.13611, 0.04033, 0.01502, 0.00723, 0.00341, 0.00188, 0.00092, 0.00064, 0.00043, 0.00042]
# payments made k: 5.64% none; of the others 1..5 with these shares, the remaining 1.04% uniform over 6..term
NO_PAYMENT_SHARE = 0.0564
PAYMENT_SHARE = [0.2559, 0.2783, 0.2479, 0.1905, 0.0170]
OVERDUE_SHARE, LOG_OVERDUE = 0.0019, (9.97, 0.48)  # rows with an overdue amount; log KRW amount when positive
DELINQ_ACCOUNTS = {0.0: 0.99461, 1.0: 0.00513, 2.0: 0.00026}


def _choice(rng: np.random.Generator, shares: dict, rows: int) -> np.ndarray:
    p = np.array(list(shares.values()), dtype=float)
    return rng.choice(np.array(list(shares.keys()), dtype=object), size=rows, p=p / p.sum())


def _round_to(x: np.ndarray, step: float) -> np.ndarray:
    return np.round(np.asarray(x, dtype=float) / step) * step


def _payments_made(rng: np.random.Generator, months: np.ndarray) -> np.ndarray:
    rows = len(months)
    head = np.array(PAYMENT_SHARE)
    k = rng.choice(np.arange(1, len(head) + 1), size=rows, p=head / head.sum())
    tail = rng.random(rows) < 1.0 - head.sum()  # long tail: 6..term
    k = np.where(tail, rng.integers(6, months + 1), k)
    return np.where(rng.random(rows) < NO_PAYMENT_SHARE, 0, k)


def _amortise(amount, months, annual_rate, k):
    """Principal and interest repaid after k payments of an amortising loan (korllama.features' schedule)."""
    i = annual_rate / 12.0
    principal = np.clip(principal_repaid(amount, months, i, k), 0.0, amount)
    interest = np.maximum(k * monthly_payment(amount, months, i) - principal, 0.0)
    return principal, interest


def synthesize(rows: int, seed: int = 0) -> pd.DataFrame:
    """A synthetic table of `rows` loans, identical for the same seed, in train.csv's raw formats."""
    rng = np.random.default_rng(seed)
    grade = rng.choice(len(GRADES), size=rows, p=GRADE_SHARE / GRADE_SHARE.sum())
    rate = rng.normal(RATE_MEDIAN[grade], RATE_SD[grade])
    rate = np.clip(rate, RATE_MEDIAN[grade] - 2.5 * RATE_SD[grade], RATE_MEDIAN[grade] + 2.5 * RATE_SD[grade])
    months = np.where(rng.random(rows) < SHARE_60_MONTHS[grade], 60, 36)

    usd = np.interp(rng.random(rows), AMOUNT_Q, AMOUNT_USD)
    step = rng.choice(AMOUNT_STEP_USD[0], size=rows, p=AMOUNT_STEP_USD[1])
    amount = (np.clip(np.round(usd / step) * step, 1000, 35000) * KRW_PER_USD).astype(np.int64)

    k = _payments_made(rng, months)
    principal, interest = _amortise(amount.astype(float), months, rate, k)
    principal = np.minimum(_round_to(principal, 12), amount).astype(np.int64)  # cents x 12 KRW, as in the data
    interest = _round_to(interest, 12)

    income = _round_to(np.exp(rng.normal(*LOG_INCOME, size=rows)), 12000).astype(np.int64)
    dti = np.round(np.clip(rng.normal(DTI_MEDIAN[grade], DTI_SD), 0.0, 99.0), 2)
    accounts = np.maximum(np.round(np.exp(rng.normal(*LOG_ACCOUNTS, size=rows))), 4).astype(np.int64)
    delinq_p = np.append(DELINQ_SHARE, 1.0 - sum(DELINQ_SHARE))
    delinq = rng.choice(np.arange(len(delinq_p)), size=rows, p=delinq_p)
    delinq = np.where(delinq == len(DELINQ_SHARE), rng.integers(11, 19, size=rows), delinq).astype(np.int64)
    overdue = np.where(
        rng.random(rows) < OVERDUE_SHARE, _round_to(np.exp(rng.normal(*LOG_OVERDUE, size=rows)), 12), 0.0
    )
    ids = np.char.add("SYN_", np.char.zfill(np.arange(rows).astype(str), 5))

    frame = pd.DataFrame({
        "ID": ids.astype(object),
        "대출금액": amount,
        "대출기간": np.where(months == 60, " 60 months", " 36 months").astype(object),
        "근로기간": _choice(rng, EMPLOYMENT, rows),
        "주택소유상태": _choice(rng, HOME, rows),
        "연간소득": income,
        "부채_대비_소득_비율": dti,
        "총계좌수": accounts,
        "대출목적": _choice(rng, PURPOSE, rows),
        "최근_2년간_연체_횟수": delinq,
        "총상환원금": principal,
        "총상환이자": interest.astype(float),
        "총연체금액": overdue.astype(float),
        "연체계좌수": _choice(rng, DELINQ_ACCOUNTS, rows).astype(float),
        "대출등급": GRADES[grade].astype(object),
    })
    return frame[COLUMNS]


def synthetic_table(rows: int, seed: int = 0, spec=None):
    """`synthesize` read the way a CSV is (every cell a string, validated and cleaned with the loan spec): a Table."""
    spec = spec if spec is not None else load_spec()
    return clean(synthesize(rows, seed).astype(str), spec, source=f"synthetic({rows}, seed {seed})")
