"""Rank scoring vs a classification head (model.head: classifier), on the same base, prompt, recipe and rows
(issue 28 item 4).

    PYTHONPATH=. python benchmarks/head.py --data ../shared/data/dacon-loan/train.csv \
        --pair dacon-tiny,dacon-tiny-head --set train.max_steps=600
    PYTHONPATH=. python benchmarks/head.py --data ... --pair smollm2-lora,smollm2-head

Each config is trained by one `korllama train --config C --data D --out KEEP/C SET...` command in its own process
(the --set overrides go to both configs of the pair alike). Then, in this process, each run scores the same --rows
held-out rows (the runs' own validation split, split_seed 0 for both, sampled with seed 0): macro-F1 and accuracy
(argmax), the calibration error (ECE, 10 bins: the report's calibration figure, korllama.evaluation.reliability),
and the scoring speed twice: every row (`Run.predict_proba`, each distinct prompt once) and the distinct prompts'
forward passes alone (`Run.score_encoded` on the distinct token sequences), with --threads torch threads, each the
fastest of --repeat calls.

Printed: one JSON line per run (training CPU minutes from train_summary.json, the best validation macro-F1 training
chose its weights on, and the figures above), then the head's ratios to rank scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from korllama.evaluation import metrics
from korllama.layout import RunDir
from korllama.run import Run
from korllama.scoring import predict_labels


def train(config: str, data: str, out: Path, overrides: list[str]) -> dict:
    """`korllama train` in a child process: its CPU seconds (user + system) and wall seconds."""
    if RunDir(out).finished:  # kept from an earlier call (--keep): measured then, not again
        return {"reused": True}
    started = time.perf_counter()
    argv = [sys.executable, "-m", "korllama", "train", "--config", config, "--data", data, "--out", str(out),
            "--overwrite", *overrides]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{output[-3000:]}")
    return {"command_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "command_wall_s": round(time.perf_counter() - started, 1)}


def fastest(call, repeat: int):
    """(the call's result, its fastest wall seconds of `repeat` calls): the first call pays one-time costs (kernels
    chosen for new shapes, memory first touched) and another job on the shared CPU can slow any one call."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return result, min(times)


def measure(folder: Path, rows: int, batch_size: int, repeat: int = 3) -> dict:
    run = Run.load(folder)
    summary = run.summary
    valid = run.split()[1]
    sample = valid.sample(rows, seed=0) if rows < len(valid) else valid
    _ = run.model
    proba, every_row_s = fastest(lambda: run.predict_proba(sample, batch_size), repeat)
    _, distinct = run.encode(sample)
    _, distinct_s = fastest(lambda: run.score_encoded(distinct, batch_size), repeat)
    truth = sample.labels.to_numpy()
    found = metrics(truth, predict_labels(proba, run.classes), run.classes, proba)
    return {"run": folder.name, "head": run.config.model.head, "base": run.config.model.base,
            "train_cpu_min": round(summary["cpu_seconds"] / 60, 2), "train_wall_min": round(summary["seconds"] / 60, 2),
            "steps": summary["global_step"], "best_eval_macro_f1": round(summary["best_eval_macro_f1"], 4),
            "rows": len(sample), "macro_f1": round(found.macro_f1, 4), "accuracy": round(found.accuracy, 4),
            "ece": round(found.calibration.ece, 4), "rows_per_s": round(len(sample) / every_row_s, 1),
            "distinct_prompts": len(distinct), "distinct_per_s": round(len(distinct) / distinct_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the labelled table (../shared/data/dacon-loan/train.csv)")
    parser.add_argument("--pair", default="dacon-tiny,dacon-tiny-head", help="rank-scoring config, head config")
    parser.add_argument("--set", action="append", default=[], help="an override for both trainings (repeatable)")
    parser.add_argument("--rows", type=int, default=2000, help="held-out rows scored (the same for both runs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="each scoring timed this many times: the fastest counts")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs here (and reuse finished ones)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="head-bench-"))
    torch.set_num_threads(args.threads)
    results = []
    for config in args.pair.split(","):
        out = folder / config
        trained = train(config, args.data, out, args.set)
        results.append(measure(out, args.rows, args.batch_size, args.repeat) | trained)
        print(json.dumps(results[-1]), flush=True)
    lm, head = results
    print(json.dumps({"head_vs_lm": {
        "macro_f1": round(head["macro_f1"] - lm["macro_f1"], 4),
        "accuracy": round(head["accuracy"] - lm["accuracy"], 4),
        "ece": round(head["ece"] - lm["ece"], 4),
        "train_cpu_min_ratio": round(head["train_cpu_min"] / lm["train_cpu_min"], 2),
        "rows_per_s_ratio": round(head["rows_per_s"] / lm["rows_per_s"], 2),
        "distinct_per_s_ratio": round(head["distinct_per_s"] / lm["distinct_per_s"], 2)}}))


if __name__ == "__main__":
    main()
