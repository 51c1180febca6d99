"""Group metrics: how well a system does for each group of rows.

For each category column of the spec, and for the quartiles of each numeric column (or each value, when a column has
few), the rows, macro-F1 (over the labels present in the group's truth or predictions, so a group with one label
only is reported, not a failure), accuracy, the share of each predicted label and the mean probability of the top
label, computed by fairlearn's MetricFrame (one frame per column, the column's groups as its sensitive feature); the
largest gaps between groups are said in words.

The group columns travel in predictions.csv (`group_columns` writes them, `read_group_columns` types them again), so
`korllama compare` can group an evaluation long after it was scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, selection_rate
from sklearn.metrics import accuracy_score, f1_score

from korllama.data import Table
from korllama.evaluation import PREDICTIONS_FILE, Evaluation

FEW_VALUES = 6  # a numeric column with this many distinct values or fewer is grouped by value, not by quartile
MIN_GROUP_ROWS = 30  # groups smaller than this are shown, but not compared in words
RESERVED = {"ID", "truth", "prediction", "generated"}  # predictions.csv columns that are not a row's fields


def group_columns(table: Table) -> tuple[dict[str, list], dict[str, str]]:
    """The spec's columns to group rows by, as extra predictions.csv columns, and their kinds (number/category)."""
    columns, kinds = {}, {}
    for col in table.spec.columns:
        if col.alias in RESERVED or col.alias.startswith("P_"):  # predictions.csv's own columns win
            continue
        kind = "category" if col.parser == "category" else "number"
        values = table.frame[col.alias]
        columns[col.alias] = [None if pd.isna(v) else v for v in values.tolist()]  # NaN / NA: an empty cell
        kinds[col.alias] = kind
    return columns, kinds


def read_group_columns(predictions: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """The group columns of a predictions.csv read as strings, typed again (empty = missing)."""
    out = {}
    for name, kind in kinds.items():
        if name not in predictions:
            continue
        raw = predictions[name].astype(object).where(predictions[name].notna(), "").astype(str)
        raw = raw.where(raw != "", None)
        out[name] = raw if kind == "category" else pd.to_numeric(raw, errors="coerce")
    return pd.DataFrame(out, index=predictions.index)


def _short(x: float) -> str:
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.3g}B"
    if a >= 1e6:
        return f"{x / 1e6:.3g}M"
    if a >= 1e4:
        return f"{x / 1e3:.3g}k"
    return f"{x:.4g}"


def groups_of(values: pd.Series, kind: str) -> pd.Series:
    """Each row's group name: the category; the value (few distinct values); else its quartile, named by the values
    it holds ("Q2: 12.1 to 18.5"). A value that half the rows share (0 delinquencies) is a group of its own and the
    rest is cut in three."""
    missing = values.isna()
    if kind == "category":
        return values.astype(object).where(~missing, "missing")
    numbers = values.astype(float)
    present = numbers.dropna()
    if present.nunique() <= FEW_VALUES:
        return numbers.map(_short).astype(object).where(~missing, "missing")
    mode = present.mode().iloc[0]
    if (present == mode).mean() >= 0.5:
        rest = numbers.where(numbers != mode)
        names = _quantile_names(rest, 3, prefix=False)
        names = names.where(numbers != mode, _short(mode))
    else:
        names = _quantile_names(numbers, 4, prefix=True)
    return names.astype(object).where(~missing, "missing")


def _quantile_names(numbers: pd.Series, q: int, prefix: bool) -> pd.Series:
    """Names of `q` quantile groups (fewer where values tie), each named by the values it holds."""
    present = numbers.dropna()
    if present.nunique() <= 1:
        return numbers.map(_short)
    codes = pd.qcut(numbers, q, duplicates="drop", labels=False)
    span = numbers.groupby(codes).agg(["min", "max"])
    full = prefix and len(span) == q
    label = {code: (f"Q{i + 1}: " if full else "") + (_short(lo) if lo == hi else f"{_short(lo)} to {_short(hi)}")
             for i, (code, (lo, hi)) in enumerate(span.iterrows())}
    return codes.map(label).astype(object)


def _measures(k: int, with_proba: bool) -> dict:
    """The MetricFrame metrics of one group. Each takes the group's truth and predictions as label codes: 0..k-1 the
    classes in order, k and up any other answer (an invalid one), so the comparisons are integer ones."""

    def macro_f1(t, p) -> float:  # over the labels present in the group, so a one-label group is not a failure
        present = [c for c in range(k) if c in set(t) or c in set(p)]
        return float(f1_score(t, p, labels=present, average="macro", zero_division=0)) if present else 0.0

    measures = {"macro_f1": macro_f1, "accuracy": lambda t, p: float(accuracy_score(t, p)),
                "shares": lambda t, p: [float(selection_rate(t, p, pos_label=c)) for c in range(k)],
                # the share of each label in the truth: the selection rate of the true labels
                "true_shares": lambda t, p: [float(selection_rate(p, t, pos_label=c)) for c in range(k)]}
    if with_proba:
        measures["mean_top_probability"] = lambda t, p, top: float(np.asarray(top, dtype=float).mean())
    return measures


def group_metrics(features: pd.DataFrame, kinds: dict[str, str], truth, pred, classes: list[str],
                  top_proba: np.ndarray | None = None) -> pd.DataFrame:
    """One line per (column, group): rows, macro_f1, accuracy, mean_top_probability, share_<label> (predicted),
    true_share_<label>. The groups of one column partition the rows."""
    truth = np.asarray(truth, dtype=object)
    codes, _ = pd.factorize(np.concatenate([np.asarray(classes, dtype=object), truth, np.asarray(pred, dtype=object)]))
    k = len(classes)
    truth_codes, pred_codes = codes[k:k + len(truth)], codes[k + len(truth):]
    measures = _measures(k, top_proba is not None)
    params = {"mean_top_probability": {"top": np.asarray(top_proba, dtype=float)}} if top_proba is not None else None
    lines = []
    for column, kind in kinds.items():
        if column not in features:
            continue
        names = groups_of(features[column], kind)
        order = names.value_counts(sort=True)
        if kind == "number":  # quartiles and values in their numeric order, missing last
            order = order.reindex(sorted(order.index, key=lambda g: (g == "missing", _group_key(g, features[column],
                                                                                                   names))))
        if order.empty:  # no rows: nothing to measure (a MetricFrame refuses empty input)
            continue
        by_group = MetricFrame(metrics=measures, y_true=truth_codes, y_pred=pred_codes, sample_params=params,
                               sensitive_features=pd.Series(names.to_numpy(), name="group")).by_group
        for group, rows in order.items():
            m = by_group.loc[group]
            line = {"column": column, "kind": kind, "group": str(group), "rows": int(rows),
                    "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                    "mean_top_probability": m["mean_top_probability"] if top_proba is not None else np.nan}
            line.update({f"share_{c}": share for c, share in zip(classes, m["shares"], strict=True)})
            line.update({f"true_share_{c}": share for c, share in zip(classes, m["true_shares"], strict=True)})
            lines.append(line)
    return pd.DataFrame(lines)


def _group_key(group: str, values: pd.Series, names: pd.Series) -> float:
    inside = values[(names == group).to_numpy()]
    return float(inside.astype(float).min()) if len(inside) else np.inf


def group_gaps(groups: pd.DataFrame, classes: list[str], min_rows: int = MIN_GROUP_ROWS, top: int = 3) -> list[str]:
    """The largest gaps between groups of a column, in words: macro-F1, accuracy, and the label a group's
    predictions over- or under-state most against its truth. Groups under `min_rows` rows are not compared."""
    if groups.empty:
        return []
    big = groups[groups["rows"] >= min_rows]
    found = []
    for column, part in big.groupby("column", sort=False):
        if len(part) < 2:
            continue
        for metric, name in (("macro_f1", "macro-F1"), ("accuracy", "accuracy")):
            lo, hi = part.loc[part[metric].idxmin()], part.loc[part[metric].idxmax()]
            gap = hi[metric] - lo[metric]
            found.append((gap, f"{column}: {name} {lo[metric]:.2f} for {lo['group']} ({lo['rows']:,} rows) vs "
                               f"{hi[metric]:.2f} for {hi['group']} ({hi['rows']:,} rows), a gap of {gap:.2f}"))
    words = [text for _, text in sorted(found, key=lambda x: -x[0])[:top]]
    if not big.empty:  # the label a group's answers over- or under-state most, beyond the system's own bias
        first = groups[groups["column"] == groups["column"].iloc[0]]  # one column's groups: every row once
        weight = first["rows"].to_numpy() / first["rows"].sum()
        overall = {c: float(weight @ (first[f"share_{c}"] - first[f"true_share_{c}"]).to_numpy()) for c in classes}
        bias = np.stack([big[f"share_{c}"] - big[f"true_share_{c}"] - overall[c] for c in classes], axis=1)
        i, k = np.unravel_index(np.abs(bias).argmax(), bias.shape)
        if abs(bias[i, k]) >= 0.05:
            g, c = big.iloc[i], classes[k]
            own = 100 * (g[f"share_{c}"] - g[f"true_share_{c}"])
            words.append(f"{g['column']} = {g['group']} ({g['rows']:,} rows): {c} is {g[f'share_{c}']:.0%} of its "
                         f"answers and {g[f'true_share_{c}']:.0%} of its truth ({own:+.0f} points; over all rows "
                         f"{100 * overall[c]:+.0f})")
    return words


def evaluation_groups(folder: str | Path, metrics: Evaluation) -> pd.DataFrame | None:
    """Group metrics of an evaluation folder (predictions.csv with its group columns), or None when it has none."""
    kinds = metrics.group_columns
    path = Path(folder) / PREDICTIONS_FILE
    if not kinds or not path.is_file():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    classes = metrics.classes
    proba_cols = [f"P_{c}" for c in classes]
    top = frame[proba_cols].astype(float).to_numpy().max(axis=1) if all(c in frame for c in proba_cols) else None
    return group_metrics(read_group_columns(frame, kinds), kinds, frame["truth"], frame["prediction"], classes, top)
