"""Tests for korllama.features: the amortisation schedule (checked month by month), the implied annual rate it
inverts, payments made, ratios. The derived columns of a read table are tested in tests/test_data.py."""

from __future__ import annotations

import numpy as np
import pytest

from korllama.features import (
    implied_annual_rate,
    monthly_payment,
    payments_made,
    principal_repaid,
    ratio,
    schedule_rate,
)


def month_by_month(amount: float, months: int, annual: float, k: int) -> tuple[float, float]:
    """Principal and interest repaid after k payments, one month at a time: interest is the monthly rate on the
    balance, the rest of the payment is principal."""
    i = annual / 12
    payment = amount * i / (1 - (1 + i) ** -months)
    balance, interest = float(amount), 0.0
    for _ in range(k):
        interest += balance * i
        balance -= payment - balance * i
    return amount - balance, interest


def test_schedule_matches_the_month_by_month_loan():
    # 12,000,000 over 36 months at 12%: the payment is 398,571.72, 1% of the balance is interest each month
    assert monthly_payment(12_000_000, 36, 0.01) == pytest.approx(398_571.72, abs=0.01)
    principal, interest = month_by_month(12_000_000, 36, 0.12, 3)
    assert principal == pytest.approx(844_100, abs=1) and interest == pytest.approx(351_615, abs=1)
    assert principal_repaid(12_000_000, 36, 0.01, 3) == pytest.approx(principal, rel=1e-12)
    assert principal_repaid(12_000_000, 36, 0.01, 36) == pytest.approx(12_000_000, rel=1e-12)  # paid off
    assert principal_repaid(12_000_000, 36, 0.01, 0) == 0


@pytest.mark.parametrize("annual,months,k", [(0.12, 36, 3), (0.06, 36, 1), (0.18, 60, 4), (0.265, 60, 2),
                                             (0.09, 36, 30), (0.0675, 60, 59)])
def test_implied_rate_recovers_a_known_rate(annual, months, k):
    principal, interest = month_by_month(16_800_000, months, annual, k)
    rate = implied_annual_rate([16_800_000], [months], [principal], [interest])
    assert rate[0] == pytest.approx(annual, abs=1e-6)
    assert payments_made([16_800_000], [months], [principal], [interest], rate)[0] == pytest.approx(k, abs=1e-4)


def test_implied_rate_is_vectorised_and_missing_when_nothing_was_repaid():
    loans = [month_by_month(10_000_000, 36, r, 2) for r in (0.07, 0.13, 0.21)]
    principal, interest = (np.array(x) for x in zip(*loans))
    rates = implied_annual_rate(np.full(5, 10_000_000.0), np.full(5, 36.0), [*principal, 0.0, np.nan],
                                [*interest, 0.0, 100.0])
    np.testing.assert_allclose(rates[:3], [0.07, 0.13, 0.21], atol=1e-6)
    assert np.isnan(rates[3:]).all()  # nothing repaid; principal unknown
    assert np.isnan(implied_annual_rate([0.0], [36], [100.0], [10.0])).all()  # no loan amount
    assert np.isnan(payments_made([1e6], [36], [0.0], [0.0], [np.nan])).all()


def test_payments_made_counts_fractional_payments():
    principal = principal_repaid(5_000_000, 60, 0.015, 2.5)
    interest = 2.5 * monthly_payment(5_000_000, 60, 0.015) - principal
    assert payments_made([5_000_000], [60], [principal], [interest], [0.18])[0] == pytest.approx(2.5)


def test_ratio_is_missing_for_zero_or_missing_denominators():
    out = ratio(np.array([1.0, 1.0, 3.0, np.nan, 0.0]), np.array([0.0, np.nan, 2.0, 2.0, 5.0]))
    assert np.isnan(out[[0, 1, 3]]).all()
    assert out[2] == 1.5 and out[4] == 0.0
    assert ratio([1, 2], [4, 8]).dtype == float  # integer columns come in too


def test_schedule_rate_reads_the_rate_from_the_principal_after_whole_payments():
    """The principal after k payments gives the rate back, whatever the interest paid: payments_made only has to
    round to k (a first month of extra days puts it at 3.3, not 3)."""
    principal, _ = month_by_month(12_000_000, 36, 0.1067, 3)
    for made in (2.7, 3.0, 3.3):
        assert schedule_rate([12_000_000], [36], [principal], [made])[0] == pytest.approx(0.1067, abs=1e-9)
    rates = schedule_rate([5e6, 2e7], [60, 36], [principal_repaid(5e6, 60, 0.2399 / 12, 2),
                                                 principal_repaid(2e7, 36, 0.0599 / 12, 1)], [2.1, 0.6])
    np.testing.assert_allclose(rates, [0.2399, 0.0599], atol=1e-9)  # under one payment counts as one
    # nothing repaid, everything repaid, no payments known: no rate
    assert np.isnan(schedule_rate([1e6, 1e6, 1e6], [36, 36, 36], [0.0, 1e6, 5e4], [1.0, 36.0, np.nan])).all()
