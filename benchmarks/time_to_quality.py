"""Time to quality in one picture: held-out macro-F1 against the CPU minutes each system's training cost.

    PYTHONPATH=. python benchmarks/time_to_quality.py EVAL_DIR... --png benchmarks/time_to_quality.png \\
        [--cpu SYSTEM=MINUTES ...]

Each EVAL_DIR is an evaluation folder (`korllama evaluate RUN ... --out EVAL_DIR`, or `korllama baseline ... --out`)
scored on the same rows. A system's cost is what its run or baseline recorded (korllama/cost.py: a run's
train_summary.json `cpu_seconds`, its validation curve from trainer_state.json; a baseline's `fit_cpu_seconds`),
the figure `korllama compare` draws; `--cpu` gives it for a system trained before korllama recorded CPU time
(measured with /usr/bin/time, say). Prints a markdown table and writes the PNG.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from korllama import plots
from korllama.cost import figure_data, training_cost
from korllama.evaluation import read_evaluation
from korllama.report import scored_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluations", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--cpu", action="append", default=[], help="SYSTEM=MINUTES for a system with no record")
    args = parser.parse_args(argv)

    given = {name: float(minutes) for name, minutes in (item.rsplit("=", 1) for item in args.cpu)}
    evals = [read_evaluation(folder) for folder in args.evaluations]
    print(scored_rows(args.evaluations, evals))
    costs = [replace(training_cost(e), minutes=given[e.system]) if e.system in given else training_cost(e)
             for e in evals]
    points, curves, _ = figure_data(evals, costs)
    print("| system | training CPU minutes | macro-F1 | accuracy | where the cost comes from |")
    print("| --- | --- | --- | --- | --- |")
    for e, c in zip(evals, costs):
        source = "--cpu (measured outside korllama)" if e.system in given else "recorded by the run / baseline"
        shown = f"{c.minutes:.1f}" if c.minutes is not None else "–"
        print(f"| {e.system} | {shown} | {e.macro_f1:.4f} | {e.accuracy:.4f} | "
              f"{source if c.minutes is not None else c.missing + ': not drawn'} |")
    plots.plot_time_to_quality(points, curves, args.png)
    print(f"-> {args.png}")


if __name__ == "__main__":
    main()
