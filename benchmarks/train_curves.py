"""Time to quality from runs' own records: the first evaluation at or above each macro-F1 threshold, and the last.

    PYTHONPATH=. python benchmarks/train_curves.py RUN... [--thresholds 0.90 0.92 0.94 0.95]

Reads each run's trainer_state.json (its validation curve: `eval_macro_f1` against `eval_cpu_minutes`, the held-out
rows the run scores at each evaluation) and train_summary.json (steps, training examples, CPU and wall seconds, the
best evaluation and the decision rule's macro-F1). Prints one markdown table row per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.90, 0.92, 0.94, 0.95])
    args = parser.parse_args()
    heads = [f"first >= {t:.2f} (step, CPU min)" for t in args.thresholds]
    print("| run | steps | examples | " + " | ".join(heads) + " | last eval macro-F1 | best (step) | decision rule "
          "| CPU s | wall s |")
    print("| --- " * (len(heads) + 8) + "|")
    for run in args.runs:
        summary = json.loads((run / "train_summary.json").read_text())
        curve = [e for e in json.loads((run / "trainer_state.json").read_text())["log_history"] if "eval_macro_f1" in e]
        firsts = []
        for t in args.thresholds:
            hit = next((e for e in curve if e["eval_macro_f1"] >= t), None)
            firsts.append("never" if hit is None else f"{hit['step']}, {hit['eval_cpu_minutes']:.2f}")
        print(f"| {run.name} | {summary['global_step']} | {summary.get('train_examples', summary['train_rows']):,} | "
              + " | ".join(firsts) + f" | {curve[-1]['eval_macro_f1']:.4f} | {summary['best_eval_macro_f1']:.4f} "
              f"({summary['best_step']}) | {summary['decision']['decision']:.4f} | {summary['cpu_seconds']:.0f} | "
              f"{summary['seconds']:.0f} |")


if __name__ == "__main__":
    main()
