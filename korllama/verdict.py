"""The report's verdict: which system to pick, by how much, at what cost. `korllama compare` opens with it.

Systems are compared only on rows they all scored: the evaluations are grouped by the rows in their
predictions.csv (ID and true label), the group with the most systems (then the most rows) is the one the verdict is
about, and the others are listed apart with their row counts. A difference in macro-F1 comes with a paired bootstrap
95% interval: the shared rows are resampled with replacement (seeded, so the page is the same each time) and both
systems' macro-F1 recomputed on each resample, so the interval reflects how much the gap depends on which rows were
drawn, not the noise of two independent samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from korllama.cost import Cost, training_cost
from korllama.evaluation import PREDICTIONS_FILE, Evaluation

RESAMPLES, SEED = 1000, 0
MIN_SHARED = 20  # fewer shared rows than this: no interval (a bootstrap of a handful of rows says little)
CHUNK_CELLS = 4_000_000  # resamples x rows drawn at a time: memory stays ~30 MB on a million-row evaluation


def scored(folder: str | Path) -> pd.DataFrame | None:
    """ID, truth and prediction of each scored row (predictions.csv); None when absent or without those columns."""
    try:
        rows = pd.read_csv(Path(folder) / PREDICTIONS_FILE, usecols=["ID", "truth", "prediction"], dtype=str,
                           keep_default_na=False)
    except (OSError, ValueError):
        return None
    return rows


def row_set(rows: pd.DataFrame | None) -> frozenset | None:
    """The rows as compare checks them: (ID, true label) pairs, so one ID of another table is another row."""
    return None if rows is None else frozenset(zip(rows["ID"], rows["truth"]))


def row_groups(sets: list[frozenset | None]) -> list[list[int]]:
    """The evaluations grouped by identical rows (an unknown row set is a group of its own), the verdict's group
    first: the most systems, then the most rows; the rest in the order given."""
    groups: dict[object, list[int]] = {}
    for k, s in enumerate(sets):
        groups.setdefault(s if s is not None else ("unknown", k), []).append(k)
    ordered = list(groups.values())
    main = max(ordered, key=lambda g: (len(g), len(sets[g[0]] or ()), -g[0]))
    return [main] + [g for g in ordered if g is not main]


def macro_f1_samples(truth: np.ndarray, preds: list[np.ndarray], classes: int, weights: np.ndarray) -> np.ndarray:
    """Macro-F1 of each prediction column under each row weighting (a resample's counts of each row): (weights,
    systems). Codes: truth and predictions 0..classes-1, -1 an invalid answer. F1 = 2 TP / (predicted + true), 0
    where a label is neither predicted nor true: scikit-learn's zero_division=0, as metrics.json's."""
    out = np.empty((len(weights), len(preds)))
    true_hot = np.eye(classes)[truth]  # rows x labels
    true_n = weights @ true_hot
    for j, pred in enumerate(preds):
        pred_hot = np.zeros((len(pred), classes))
        valid = pred >= 0
        pred_hot[np.flatnonzero(valid), pred[valid]] = 1.0
        tp, pred_n = weights @ (true_hot * pred_hot), weights @ pred_hot
        denom = pred_n + true_n
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        out[:, j] = f1.mean(axis=1)
    return out


@dataclass
class Difference:
    rows: int  # the rows both systems scored
    a: float  # macro-F1 of each on those rows
    b: float
    low: float | None = None  # 95% interval of a - b (None: too few shared rows)
    high: float | None = None

    @property
    def diff(self) -> float:
        return self.a - self.b

    @property
    def clear(self) -> bool:
        """The interval excludes 0: the rows tell the two apart."""
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, classes: list[str], resamples: int = RESAMPLES,
                     seed: int = SEED) -> Difference | None:
    """Macro-F1 of `a` minus `b` on the rows both scored (same ID and truth), with the paired bootstrap's 95%
    interval; None when they share no row."""
    both = a.drop_duplicates("ID").merge(b.drop_duplicates("ID"), on=["ID", "truth"], suffixes=("_a", "_b"))
    if both.empty:
        return None
    code = {c: i for i, c in enumerate(classes)}
    truth = both["truth"].map(code).fillna(-1).to_numpy(int)
    keep = truth >= 0  # a true label outside the label set cannot happen in a korllama evaluation; skip it if it does
    truth = truth[keep]
    preds = [both[f"prediction_{s}"].map(code).fillna(-1).to_numpy(int)[keep] for s in "ab"]
    n = len(truth)
    point = macro_f1_samples(truth, preds, len(classes), np.ones((1, n)))[0]
    found = Difference(rows=n, a=float(point[0]), b=float(point[1]))
    if n < MIN_SHARED:
        return found
    rng = np.random.default_rng(seed)
    diffs = []
    step = max(1, CHUNK_CELLS // n)
    for start in range(0, resamples, step):
        draws = rng.integers(0, n, size=(min(step, resamples - start), n))
        weights = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(float)
        f1 = macro_f1_samples(truth, preds, len(classes), weights)
        diffs.append(f1[:, 0] - f1[:, 1])
    found.low, found.high = (float(q) for q in np.percentile(np.concatenate(diffs), [2.5, 97.5]))
    return found


# --- the words ----------------------------------------------------------------------------------------------------

def signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "\u2212")


def interval(d: Difference, flip: bool = False) -> str:
    """The 95% interval of a - b in words; `flip`: of b - a."""
    if d.low is None:
        return f"no interval: {d.rows} shared rows"
    low, high = (-d.high, -d.low) if flip else (d.low, d.high)
    return f"{signed(low)} to {signed(high)}"


def cost_words(cost: Cost) -> str:
    if cost.minutes is None:
        return "not recorded"
    return f"{cost.minutes:,.1f} CPU min" if cost.minutes >= 0.1 else "under 0.1 CPU min"


def trains_in(cost: Cost) -> str:
    """The cost inside a sentence: "1.6 CPU min to train", or that it is not known."""
    return "no recorded training cost" if cost.minutes is None else f"{cost_words(cost)} to train"


def _first_up(text: str) -> str:
    return text[:1].upper() + text[1:]  # not str.capitalize: it would lower "CPU"


def speed_words(e: Evaluation) -> str:
    return f"{e.rows_per_s:,.0f} rows/s" if e.rows_per_s and e.rows_per_s >= 10 else \
        f"{e.rows_per_s:.2f} rows/s" if e.rows_per_s else "not recorded"


def _line(e: Evaluation, cost: Cost, d: Difference | None, best: bool) -> dict:
    """One line of the verdict's table; `d` is the pick's macro-F1 minus this system's, so the line says the flip."""
    gap = "highest" if best else "" if d is None else f"{signed(-d.diff)} ({interval(d, flip=True)})"
    # "below", not "clear": jinja's s.clear would find the dict's own method
    return {"system": e.system, "macro_f1": f"{e.macro_f1:.3f}", "gap": gap, "below": bool(d and d.clear),
            "cost": cost_words(cost), "cost_why": cost.missing, "speed": speed_words(e), "best": best}


def _pick(evals: list[Evaluation], costs: list[Cost], best: int, diffs: dict[int, Difference]) -> str:
    """The sentence that says which system to take and why: the best, or, when the rows cannot tell it from another
    system, the cheapest to train of those (then the faster grader)."""
    e = evals[best]
    tied = [k for k, d in diffs.items() if not d.clear and d.low is not None]
    if not tied:
        return (f"Pick {e.system}: every other system here is below it by more than the bootstrap interval. "
                f"{_first_up(trains_in(costs[best]))}; grades {speed_words(e)}.")
    order = sorted([best, *tied], key=lambda k: (costs[k].minutes if costs[k].minutes is not None else np.inf,
                                                 -(evals[k].rows_per_s or 0)))
    cheap = order[0]
    names = ", ".join(evals[k].system for k in tied)
    if cheap == best:
        return (f"Pick {e.system}: {names} cannot be told apart from it on these rows (the interval includes 0), "
                f"and it is the cheapest of them: {trains_in(costs[best])}, {speed_words(e)}.")
    c = evals[cheap]
    return (f"{e.system} scores highest, but the rows cannot tell it from {names} (the interval includes 0). "
            f"Pick {c.system} if cost matters: {trains_in(costs[cheap])}, {speed_words(c)}; {e.system}: "
            f"{trains_in(costs[best])}, {speed_words(e)}.")


def verdict(folders: list[str | Path], evals: list[Evaluation]) -> dict:
    """The verdict section: the headline, the pick, a line per system of the verdict's group (macro-F1, difference
    from the best with its interval, training cost, grading speed), and the systems scored on other rows, apart.
    Also "groups": the evaluations' indices grouped by rows, the verdict's first (the figures follow them)."""
    rows = [scored(f) for f in folders]
    sets = [row_set(r) for r in rows]
    groups = row_groups(sets)
    costs = [training_cost(e) for e in evals]
    classes = evals[0].classes
    main = groups[0]
    best = max(main, key=lambda k: (evals[k].macro_f1, -k))
    diffs = {k: d for k in main if k != best and rows[k] is not None and rows[best] is not None
             and (d := paired_bootstrap(rows[best], rows[k], classes)) is not None}
    n_main = len(sets[best]) if sets[best] is not None else evals[best].n
    e = evals[best]
    if len(main) == 1:
        headline = (f"{e.system}: macro-F1 {e.macro_f1:.3f} on {n_main:,} rows; no other system was scored on "
                    "these rows, so there is nothing to set it against here.")
        pick = f"{_first_up(trains_in(costs[best]))}; grades {speed_words(e)}."
    else:
        runner = max(diffs, key=lambda k: diffs[k].b) if diffs else None
        headline = f"{e.system} grades best on the {n_main:,} rows {len(main)} systems share: macro-F1 {e.macro_f1:.3f}"
        if runner is not None:
            d = diffs[runner]
            headline += (f", {signed(d.diff)} over {evals[runner].system} ({d.b:.3f}; paired bootstrap 95% interval of "
                         f"the difference {interval(d)}).")
        else:
            headline += "."
        pick = _pick(evals, costs, best, diffs)
    lines = [_line(evals[k], costs[k], diffs.get(k), k == best)
             for k in sorted(main, key=lambda k: -evals[k].macro_f1)]
    apart = [_apart(g, evals, rows, sets, costs, best, n_main) for g in groups[1:]]
    return {"headline": headline, "pick": pick, "lines": lines, "apart": apart, "groups": groups,
            "resamples": RESAMPLES, "rows": n_main}


def _apart(group: list[int], evals: list[Evaluation], rows: list, sets: list, costs: list[Cost], best: int,
           n_main: int) -> dict:
    """A group of systems scored on other rows: who, on how many rows and how those relate to the verdict's rows,
    the best of them, and how that one compares with the pick on the rows both scored."""
    first = sets[group[0]]
    names = ", ".join(evals[k].system for k in group)
    if first is None:
        why = f"its {PREDICTIONS_FILE} has no ID and truth, so its rows cannot be matched"
    else:
        shared = len(first & sets[best]) if sets[best] is not None else 0
        why = (f"{len(first):,} rows, " + ("a sample of the verdict's rows" if shared == len(first) else
                                            f"{shared:,} of them among the verdict's {n_main:,}" if shared else
                                            "none of them among the verdict's rows"))
    top = max(group, key=lambda k: (evals[k].macro_f1, -k))
    words = [f"best here {evals[top].system}, macro-F1 {evals[top].macro_f1:.3f}" if len(group) > 1 else
             f"macro-F1 {evals[top].macro_f1:.3f}"]
    if rows[top] is not None and rows[best] is not None:
        d = paired_bootstrap(rows[top], rows[best], evals[0].classes)
        if d is not None and d.low is not None:
            words.append(f"on the {d.rows:,} rows it shares with {evals[best].system}: {d.a:.3f} against {d.b:.3f}, "
                         f"{signed(d.diff)} ({interval(d)})")
    words.append(f"{trains_in(costs[top])}, {speed_words(evals[top])}")
    return {"systems": names, "why": why, "words": "; ".join(words)}
