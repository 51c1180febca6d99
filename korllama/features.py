"""Derived analyst features, computed for the whole table at once (numpy, no row loops).

The key one is the *implied annual interest rate*: a loan of amount P over n monthly payments at monthly rate i
has the payment M = P·i / (1 - (1+i)^-n). After k payments the borrower has paid k·M in total, of which
P - B_k is principal (B_k the balance left). Principal and interest repaid so far give two equations in the two
unknowns (i, k); for a fixed total paid, a higher rate moves money from principal to interest, so the principal
explained is monotone in i and a vectorised bisection finds it.
"""

from __future__ import annotations

import numpy as np

RATE_BOUNDS = (1e-4, 1.0)  # annual rate searched between 0.01% and 100%


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, missing where the denominator is zero or missing."""
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    out = np.full(num.shape, np.nan)
    ok = np.isfinite(num) & np.isfinite(den) & (den != 0)
    out[ok] = num[ok] / den[ok]
    return out


# --- the amortisation schedule: the one place its formula is written (synth.py draws loans with it too) -----------

def monthly_payment(amount, months, monthly):
    """The fixed payment M = P·i / (1 - (1+i)^-n) of a loan of `amount` over `months` at monthly rate `monthly`."""
    growth = (1.0 + monthly) ** months
    return amount * monthly * growth / (growth - 1.0)


def principal_repaid(amount, months, monthly, k):
    """Principal repaid after `k` payments (fractional k allowed): the amount less the balance still owed."""
    payment = monthly_payment(amount, months, monthly)
    grown = (1.0 + monthly) ** k
    balance = amount * grown - payment * (grown - 1.0) / monthly
    return amount - balance


def _principal_explained(amount, months, monthly, total_paid):
    """Principal repaid after paying `total_paid` on an amortising loan at `monthly` rate."""
    k = total_paid / monthly_payment(amount, months, monthly)  # payments made (fractional)
    return principal_repaid(amount, months, monthly, k)


def implied_annual_rate(amount, months, principal_repaid, interest_repaid, iterations: int = 60) -> np.ndarray:
    """Annual rate (0.098 = 9.8%) that explains principal and interest repaid; NaN when nothing was repaid."""
    amount = np.asarray(amount, dtype=float)
    months = np.asarray(months, dtype=float)
    principal = np.asarray(principal_repaid, dtype=float)
    interest = np.asarray(interest_repaid, dtype=float)
    total = principal + interest
    valid = (
        np.isfinite(amount) & np.isfinite(months) & np.isfinite(total)
        & (amount > 0) & (months > 0) & (principal > 0) & (interest >= 0)
    )
    lo = np.full(amount.shape, RATE_BOUNDS[0] / 12)
    hi = np.full(amount.shape, RATE_BOUNDS[1] / 12)
    a, n, p, t = (np.where(valid, x, 1.0) for x in (amount, months, principal, total))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            too_much_principal = _principal_explained(a, n, mid, t) > p
            lo = np.where(too_much_principal, mid, lo)
            hi = np.where(too_much_principal, hi, mid)
    rate = 12 * 0.5 * (lo + hi)
    return np.where(valid, rate, np.nan)


def payments_made(amount, months, principal_repaid, interest_repaid, annual_rate) -> np.ndarray:
    """Monthly payments the repaid total amounts to at the implied rate (the loan's age, roughly); NaN if none."""
    amount = np.asarray(amount, dtype=float)
    months = np.asarray(months, dtype=float)
    total = np.asarray(principal_repaid, dtype=float) + np.asarray(interest_repaid, dtype=float)
    monthly = np.asarray(annual_rate, dtype=float) / 12
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return total / monthly_payment(amount, months, monthly)


def schedule_rate(amount, months, principal, payments, iterations: int = 60) -> np.ndarray:
    """Annual rate at which `round(payments)` scheduled payments repay exactly `principal`; NaN without repayment.

    The principal part of the schedule is what the lender computes to the cent, while the interest paid also
    carries the days between payments; so with the whole number of payments made (from `payments_made`) the
    principal alone gives the rate more exactly than the implied rate (on the loan table: 97% of rows on a rate
    that at least 30 rows share, vs 83%). Principal repaid after k payments falls as the rate rises: bisection.
    Missing when nothing (or everything) was repaid.
    """
    amount = np.asarray(amount, dtype=float)
    months = np.asarray(months, dtype=float)
    principal = np.asarray(principal, dtype=float)
    k = np.maximum(np.round(np.asarray(payments, dtype=float)), 1.0)
    valid = (np.isfinite(amount) & np.isfinite(months) & np.isfinite(principal) & np.isfinite(k)
             & (amount > 0) & (months > 0) & (principal > 0) & (principal < amount) & (k < months))
    a, n, p, k = (np.where(valid, x, 1.0) for x in (amount, months, principal, k))
    lo = np.full(amount.shape, RATE_BOUNDS[0] / 12)
    hi = np.full(amount.shape, RATE_BOUNDS[1] / 12)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            too_much_principal = principal_repaid(a, n, mid, k) > p  # the rate is higher than mid
            lo = np.where(too_much_principal, mid, lo)
            hi = np.where(too_much_principal, hi, mid)
    return np.where(valid, 12 * 0.5 * (lo + hi), np.nan)


def weighted_sum(*columns: np.ndarray, weights: list[float]) -> np.ndarray:
    """sum(w_i * column_i): a rubric's total score; missing where any input is missing."""
    return sum(w * np.asarray(c, dtype=float) for w, c in zip(weights, columns, strict=True))


OPS = {"ratio": ratio, "weighted_sum": weighted_sum, "implied_annual_rate": implied_annual_rate,
       "payments_made": payments_made, "schedule_rate": schedule_rate}
