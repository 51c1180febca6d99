"""What each system costs, side by side, in one run on one machine (issue 27): every system named (an LLM run
folder or the trees' folder that `korllama baseline --out` keeps) on the same files.

    python benchmarks/cost.py runs/dacon-tiny runs/smollm2-lora runs/eval/baseline \
        --test ../shared/data/dacon-loan/test.csv --portfolio-rows 1000000 --work /tmp/cost-bench

Printed, then pasted into benchmarks/RESULTS.md with this command:
- this machine's FLOP limit: a 2048 x 2048 fp32 matmul, repeated, on torch's threads (GFLOP/s);
- per system, the whole `korllama predict SYSTEM --data FILE` command (its own process under `/usr/bin/time -v`:
  start-up, the validating pass, reading, scoring, writing) on the test file and on a portfolio of
  --portfolio-rows rows resampled from the test rows with fresh IDs: rows/s and peak RSS;
  `korllama data check` of the portfolio beside it (the goal: predict within 3x of reading);
- per system, the model-only rate: its `predict_proba` on the test file's distinct prompts (an LLM: each distinct
  prompt is one forward pass; the trees: every row), and for an LLM the share of the FLOP limit that is
  (2 x parameters x tokens per prompt);
- per system, the training CPU to reach held-out macro-F1 0.95 (an LLM run's validation curve, eval_cpu_minutes;
  the trees' whole fit) and the best it reached.
The service's latency and throughput are benchmarks/load_serve.py's, run against `korllama serve SYSTEM`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

TIME = "/usr/bin/time"
TARGET = 0.95


def flop_limit(size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of fp32 matmul on torch's threads: the most this CPU does for a dense model."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of a command in its own process."""
    started = time.perf_counter()
    done = subprocess.run([TIME, "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 2**20
    return wall, rss


def portfolio(test: Path, rows: int, target: Path) -> Path:
    """`rows` rows drawn with replacement from the test file (seed 0), each with a fresh ID."""
    if target.is_file():
        return target
    frame = pd.read_csv(test, dtype=str, keep_default_na=False)
    drawn = frame.sample(rows, replace=True, random_state=0).reset_index(drop=True)
    drawn[drawn.columns[0]] = [f"PF_{i:07d}" for i in range(rows)]
    drawn.to_csv(target, index=False)
    return target


def model_only(folder: Path, test: Path) -> dict:
    """The system's own rate on the test file's distinct inputs, and (an LLM) the share of the FLOP limit."""
    from korllama.data import read_table
    from korllama.system import load_system

    system = load_system(folder)
    table = read_table(test, system.spec)
    if system.template is None:  # the trees read the rows themselves
        started = time.perf_counter()
        system.predict_proba(table)
        return {"distinct": len(table), "rate": len(table) / (time.perf_counter() - started), "flops": None}
    prompts = pd.Series(system.template.render(table), dtype=object)
    distinct = table.subset(np.flatnonzero(~prompts.duplicated().to_numpy()))
    _, encoded = system.encode(distinct)
    started = time.perf_counter()
    system.predict_proba(distinct, 64)
    rate = len(distinct) / (time.perf_counter() - started)
    params = sum(p.numel() for p in system.model.parameters())
    tokens = np.mean([len(e) for e in encoded]) + 1  # the prompt and the label's position
    return {"distinct": len(distinct), "rate": rate, "flops": 2 * params * tokens * rate / 1e9}


def to_quality(folder: Path) -> dict:
    """Training CPU minutes to held-out macro-F1 >= TARGET, and the best reached (None: not recorded)."""
    from korllama.layout import RunDir, TreesDir

    trees = TreesDir(folder)
    if trees.is_trees:
        from korllama.evaluation import read_evaluation

        record = trees.read_record()
        best = read_evaluation(folder).macro_f1
        minutes = record.get("fit_cpu_seconds", float("nan")) / 60
        return {"minutes": minutes if best >= TARGET else None, "total": minutes, "best": best}
    run = RunDir(folder)
    state = json.loads(run.trainer_state.read_text("utf-8"))["log_history"]
    curve = [(e["eval_cpu_minutes"], e["eval_macro_f1"]) for e in state if "eval_cpu_minutes" in e]
    reached = next((m for m, f in curve if f >= TARGET), None)
    summary = run.read_summary()
    return {"minutes": reached, "total": summary.get("cpu_seconds", float("nan")) / 60,
            "best": max((f for _, f in curve), default=float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("systems", nargs="+", type=Path, help="run folders and trees' folders")
    parser.add_argument("--test", type=Path, default=Path("../shared/data/dacon-loan/test.csv"))
    parser.add_argument("--portfolio-rows", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cost-bench"))
    parser.add_argument("--skip-portfolio", action="store_true", help="only the test file (a quick look)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    korllama = [sys.executable, "-m", "korllama"]

    limit = flop_limit()
    print(f"FLOP limit: {limit:.0f} GFLOP/s fp32 ({torch.get_num_threads()} threads)")
    files = [("test.csv", args.test)]
    if not args.skip_portfolio:
        big = portfolio(args.test, args.portfolio_rows, args.work / "portfolio.csv")
        wall, rss = timed([*korllama, "data", "check", str(big)])
        print(f"`korllama data check` of the {args.portfolio_rows:,}-row portfolio: {wall:.1f} s, {rss:.2f} GB")
        files.append(("portfolio", big))

    print("\n| system | file | rows | whole `predict` s | rows/s | peak RSS GB |\n"
          "| --- | --- | ---: | ---: | ---: | ---: |")
    for folder in args.systems:
        for name, path in files:
            rows = sum(1 for _ in path.open("rb")) - 1
            out = args.work / f"{folder.name}-{name}.csv"
            out.unlink(missing_ok=True)
            wall, rss = timed([*korllama, "predict", str(folder), "--data", str(path), "--out", str(out)])
            print(f"| {folder.name} | {name} | {rows:,} | {wall:.1f} | {rows / wall:,.0f} | {rss:.2f} |", flush=True)

    print("\n| system | distinct inputs | model-only /s | GFLOP/s (share of limit) | CPU min to 0.95 | training CPU "
          "min | best held-out macro-F1 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for folder in args.systems:
        rate, quality = model_only(folder, args.test), to_quality(folder)
        flops = "—" if rate["flops"] is None else f"{rate['flops']:.1f} ({rate['flops'] / limit:.0%})"
        reached = "not reached" if quality["minutes"] is None else f"{quality['minutes']:.1f}"
        print(f"| {folder.name} | {rate['distinct']:,} | {rate['rate']:,.0f} | {flops} | {reached} | "
              f"{quality['total']:.1f} | {quality['best']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
