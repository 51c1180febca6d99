"""Accuracy of an evaluation on the rows with a rate and on the rows that repaid nothing, per evaluation folder.

    python benchmarks/rated_rows.py EVAL [EVAL ...]

EVAL is the --out folder of `korllama evaluate` (or `korllama baseline`): its predictions.csv carries each row's
columns beside truth and prediction. A row that repaid no principal (principal_repaid == 0) has no implied rate, so
the dacon-tiny prompt shows nothing that separates its grades (issue 21, item 2: 74% of the trees' errors are there);
the split says how much of a system's error is on those rows and how much on the rows it can read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import f1_score


def split_accuracy(folder: Path) -> dict:
    rows = pd.read_csv(folder / "predictions.csv", keep_default_na=False, usecols=["truth", "prediction",
                                                                                    "principal_repaid"])
    right = rows["truth"] == rows["prediction"]
    unrated = pd.to_numeric(rows["principal_repaid"], errors="coerce").fillna(0) == 0
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
    return {"folder": str(folder), "decision": metrics.get("decision_rule", "?"), "n": len(rows),
            "macro_f1": f1_score(rows["truth"], rows["prediction"], average="macro"), "accuracy": right.mean(),
            "rated_n": int((~unrated).sum()), "rated_acc": right[~unrated].mean(),
            "unrated_n": int(unrated.sum()), "unrated_acc": right[unrated].mean(),
            "unrated_error_share": (~right & unrated).sum() / max(1, (~right).sum())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("| evaluation | decision | rows | macro-F1 | accuracy | rated rows | acc. rated | unrated rows "
          "| acc. unrated | share of errors unrated |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder in args.folders:
        r = split_accuracy(folder)
        print(f"| {r['folder']} | {r['decision']} | {r['n']:,} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} "
              f"| {r['rated_n']:,} | {r['rated_acc']:.4f} | {r['unrated_n']:,} | {r['unrated_acc']:.4f} "
              f"| {r['unrated_error_share']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
