"""A bounded search for SmolLM2-135M's LoRA recipe on the real table: which targets, rank, learning rate, schedule and
batch learn the grades fastest per CPU second.

    PYTHONPATH=. python benchmarks/lora_recipe.py --data ../shared/data/dacon-loan/train.csv   # the halving search
    python benchmarks/lora_recipe.py --data ... --configs all:16:2e-3:cosine:16,qv:8:1e-3:cosine:16 --steps 60
    python benchmarks/lora_recipe.py --data ... --configs all:16:4e-3:cosine:16 --steps 400 --score-rows 2000

Rows: the stratified 80/20 split of --data that `korllama train` makes (seed 0). Every run trains on the same fixed
--rows rows drawn from the 80% and is scored on the same --score-rows rows drawn from the 20% (no run trained on
them), by korllama's own rank scoring (`korllama.evaluate.evaluate_run`, argmax). Each run is a real
`korllama.training.train` on configs/smollm2-lora.yaml with overrides (its valid_fraction set to 0.01 so that the
Trainer's end-of-run check takes 20 of the --rows rows and the rest train; `train()` writes no model card, so none
of the card's minute of re-scoring is counted: it is not part of learning).

A config is TARGETS:R:LR:SCHEDULE:BATCH, e.g. all:16:2e-3:cosine:16 — TARGETS qv (q_proj, v_proj: the original's)
or all (every linear layer of the blocks: q, k, v, o, gate, up, down); alpha is 2 R (the original's ratio, r 8 /
alpha 16), so R changes the adapter's capacity, not its step size; SCHEDULE constant, or cosine / linear with a
warmup of a tenth of the steps.

Without --configs: successive halving over GRID — every config for --first-steps steps, then the --keep best (by
held-out macro-F1) and the original's recipe again from scratch for --steps steps (a new schedule over more steps).

Printed: a table of config, steps, CPU seconds (user + system of this process, all threads, training + scoring),
wall seconds, rows per wall second in training, held-out macro-F1 and accuracy. The machine may be shared: CPU
seconds measure the work, wall seconds also the other jobs' load. --json FILE keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {"qv": ["q_proj", "v_proj"], "all": ALL_LINEAR}
ORIGINAL = "qv:8:1e-3:cosine:16"
# One lever at a time around the probe's recipe (all:16:2e-3:cosine:16), plus lr for both target sets (fewer
# adapted layers usually want a larger step); bounded to 11 short runs on a shared 2-core CPU.
GRID = [
    ORIGINAL,
    "qv:16:2e-3:cosine:16", "qv:16:4e-3:cosine:16",
    "all:16:1e-3:cosine:16", "all:16:2e-3:cosine:16", "all:16:4e-3:cosine:16",
    "all:8:2e-3:cosine:16", "all:32:2e-3:cosine:16",
    "all:16:2e-3:constant:16", "all:16:2e-3:linear:16",
    "all:16:2e-3:cosine:32",
]


def overrides(spec: str, steps: int) -> list[str]:
    """`korllama train` overrides for one config string and a step count."""
    targets, r, lr, schedule, batch = spec.split(":")
    if targets not in TARGETS or schedule not in ("constant", "cosine", "linear"):
        raise SystemExit(f"config {spec!r}: TARGETS is qv or all, SCHEDULE constant, cosine or linear")
    warmup = 0 if schedule == "constant" else max(1, steps // 10)
    return [f"lora.target_modules=[{','.join(TARGETS[targets])}]", f"lora.r={int(r)}", f"lora.alpha={2 * int(r)}",
            f"train.lr={float(lr)}", f"train.scheduler={schedule}", f"train.warmup_steps={warmup}",
            f"train.batch_size={int(batch)}", f"train.max_steps={steps}", f"train.eval_steps={steps}",
            f"train.save_steps={steps}", "train.eval_rows=10", f"train.logging_steps={max(1, steps // 6)}",
            "data.valid_fraction=0.01"]



def run_one(spec: str, steps: int, train_rows, score_rows, workdir: Path, config_name: str) -> dict:
    from korllama.config import load_config
    from korllama.evaluate import evaluate_run
    from korllama.run import Run
    from korllama.training import train

    config = load_config(config_name, overrides(spec, steps))
    run_dir = workdir / f"{spec.replace(':', '_')}-{steps}"
    shutil.rmtree(run_dir, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = train(config, run_dir, table=train_rows)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = evaluate_run(Run.load(run_dir, table=train_rows), score_rows, run_dir / "eval")
    row = {"config": spec, "steps": steps, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
           "train_cpu_s": train_cpu, "train_wall_s": train_wall,
           "rows_per_s": steps * config.train.batch_size / train_wall, "train_loss": summary["train_loss"],
           "macro_f1": result.macro_f1, "accuracy": result.accuracy, "scored": result.n,
           "load": os.getloadavg()[0]}
    shutil.rmtree(run_dir, ignore_errors=True)
    return row


def show(rows: list[dict]) -> None:
    print("| config (targets:r:lr:schedule:batch) | steps | CPU s | wall s | train rows/s (wall) | held-out macro-F1 "
          "| accuracy | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['steps']} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['rows_per_s']:.1f} "
              f"| {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {r['load']:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the labelled table (../shared/data/dacon-loan/train.csv)")
    parser.add_argument("--config", default="smollm2-lora", help="the run config the overrides apply to")
    parser.add_argument("--configs", default=None, help="comma-separated configs to run (default: the halving GRID)")
    parser.add_argument("--rows", type=int, default=2000, help="fixed training rows, drawn from the 80%%")
    parser.add_argument("--score-rows", type=int, default=400, help="fixed held-out rows, drawn from the 20%%")
    parser.add_argument("--first-steps", type=int, default=30, help="steps of the halving's first round")
    parser.add_argument("--keep", type=int, default=3, help="configs kept for the second round")
    parser.add_argument("--steps", type=int, default=60, help="steps of the second round (or of --configs)")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)

    import warnings

    from korllama.data import read_table, split

    warnings.filterwarnings("ignore")
    table = read_table(args.data)
    fitting, held_out, _ = split(table, 0.2, 0)
    train_rows, score_rows = fitting.sample(args.rows, seed=0), held_out.sample(args.score_rows, seed=0)
    print(f"{len(train_rows):,} training rows, {len(score_rows):,} held-out rows, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lora-recipe-") as tmp:
        def go(spec: str, steps: int) -> dict:
            rows.append(run_one(spec, steps, train_rows, score_rows, Path(tmp), args.config))
            show(rows[-1:])
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))
            return rows[-1]

        if args.configs:
            for spec in args.configs.split(","):
                go(spec, args.steps)
        else:
            first = [go(spec, args.first_steps) for spec in GRID]
            best = [r["config"] for r in sorted(first, key=lambda r: -r["macro_f1"])[:args.keep]]
            for spec in dict.fromkeys(best + [ORIGINAL]):
                go(spec, args.steps)
    print()
    show(rows)
    return rows


if __name__ == "__main__":
    main()
