"""The demo's SmolLM2 stage over seeds: does its figure hold, or swing with the seed? (issue 31)

    PYTHONPATH=. python benchmarks/demo_seeds.py                                  # the shipped stage, seeds 0-2
    PYTHONPATH=. python benchmarks/demo_seeds.py --lr 1e-3 --steps 60 --seeds 0,1,2 --json /tmp/lr1e-3.json

Each run is the stage `korllama demo` trains (korllama.demo.stage_config: configs/smollm2-lora.yaml on the demo's
synthetic table, its prompt fields, --steps steps of 16 rows), with train.seed set to each seed (data order,
dropout, LoRA's initial matrices), then rank-scored on the demo's 200 held-out rows (korllama.evaluate.evaluate_run,
argmax) as the demo scores them. The table, the split and the scored rows are the same for every run; only the
seed (and the recipe given) changes. Training runs on the cores (train.threads default), never the load, so a run
repeats to the byte; CPU seconds are this process's (all threads) for training and scoring.

Printed: one line per run, then mean, min and max of the held-out macro-F1 per recipe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from korllama.demo import PretrainedStage, stage_config
from korllama.evaluate import evaluate_run
from korllama.io import write_csv
from korllama.run import Run
from korllama.synth import synthesize
from korllama.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = PretrainedStage()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=default.lr)
    parser.add_argument("--steps", type=int, default=default.steps)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: a tenth of the steps)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    stage = replace(default, lr=args.lr, steps=args.steps, warmup_steps=args.warmup)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.csv"
        write_csv(data, synthesize(4000, 0))  # the demo's table (korllama demo: 4,000 rows, seed 0)
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = stage_config(replace(stage, seed=seed), data)
            run = Path(tmp) / f"run-{seed}"
            wall, cpu = time.perf_counter(), time.process_time()
            summary = train(config, run)
            tuned = Run.load(run)
            after = evaluate_run(tuned, tuned.training_table(), Path(tmp) / f"eval-{seed}", held_out=True,
                                 limit=stage.score_rows, system=f"seed {seed}")
            row = {"lr": stage.lr, "steps": stage.steps, "warmup": config.train.warmup_steps, "seed": seed,
                   "macro_f1": after["macro_f1"], "accuracy": after["accuracy"], "rows": after["n"],
                   "train_loss": summary["train_loss"], "threads": summary["threads"],
                   "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
            rows.append(row)
            print(json.dumps(row), flush=True)
    scores = [r["macro_f1"] for r in rows]
    print(f"lr {stage.lr:g}, {stage.steps} steps, warm-up {rows[0]['warmup']}: held-out macro-F1 mean "
          f"{statistics.mean(scores):.3f}, min {min(scores):.3f}, max {max(scores):.3f} over {len(scores)} seeds")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
