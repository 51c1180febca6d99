"""A recipe over seeds: does its held-out figure hold, or swing with the seed? (issue 31)

    PYTHONPATH=. python benchmarks/seeds.py                              # the demo's SmolLM2 stage, seeds 0-2
    PYTHONPATH=. python benchmarks/seeds.py --stage-lr 1e-3              # the same stage at another lr
    PYTHONPATH=. python benchmarks/seeds.py --config dacon-tiny --data ../shared/data/dacon-loan/train.csv
    PYTHONPATH=. python benchmarks/seeds.py --config smollm2-lora --data /tmp/first2000.csv --score-rows 300 \
        train.max_steps=60 train.eval_steps=1000 train.save_steps=1000 train.eval_rows=50

Without --config: the SmolLM2 stage `korllama demo` trains (korllama.demo.stage_config: configs/smollm2-lora.yaml on
the demo's synthetic table, 4,000 rows, seed 0, its prompt fields, 60 steps of 16 rows), scored on the demo's 200
held-out rows. With --config: that config on --data (overrides after it). Each seed is train.seed (data order,
dropout, LoRA's initial matrices); the table, the split and the scored rows (the run's held-out split, a seeded
sample of --score-rows of it) are the same for every seed. Training uses the cores (train.threads default), never
the load, so a seed's run repeats to the byte. CPU seconds are this process's, all threads, training + scoring.

Printed: one JSON line per run, then mean, min and max of the held-out macro-F1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from korllama.config import load_config
from korllama.demo import PretrainedStage, stage_config
from korllama.evaluate import evaluate_run
from korllama.io import write_csv
from korllama.run import Run
from korllama.synth import synthesize
from korllama.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stage = PretrainedStage()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--config", default=None, help="a config name or file (default: the demo's SmolLM2 stage)")
    parser.add_argument("--data", type=Path, default=None, help="with --config: the labelled table")
    parser.add_argument("--score-rows", type=int, default=None, help="held-out rows scored (default: the stage's "
                                                                     "200; with --config, all)")
    parser.add_argument("--stage-lr", type=float, default=stage.lr)
    parser.add_argument("--stage-steps", type=int, default=stage.steps)
    parser.add_argument("--stage-batch", type=int, default=stage.batch_size)
    parser.add_argument("--stage-warmup", type=int, default=None, help="(default: a tenth of the steps)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder (run-SEED)")
    parser.add_argument("overrides", nargs="*", help="with --config: key=value overrides")
    args = parser.parse_args()
    stage = replace(stage, lr=args.stage_lr, steps=args.stage_steps, warmup_steps=args.stage_warmup,
                    batch_size=args.stage_batch)
    score_rows = args.score_rows if args.score_rows is not None or args.config else stage.score_rows
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.config is None:
            data = Path(tmp) / "data.csv"
            write_csv(data, synthesize(4000, 0))  # the demo's table (korllama demo: 4,000 rows, seed 0)
        for seed in [int(s) for s in args.seeds.split(",")]:
            if args.config is None:
                config, what = stage_config(replace(stage, seed=seed), data), "demo SmolLM2 stage"
            else:
                config = load_config(args.config, [f"data.train={args.data}", *args.overrides, f"train.seed={seed}"])
                what = args.config
            run = (args.keep or Path(tmp)) / f"run-{seed}"
            wall, cpu = time.perf_counter(), time.process_time()
            summary = train(config, run)
            tuned = Run.load(run)
            after = evaluate_run(tuned, tuned.training_table(), Path(tmp) / f"eval-{seed}", held_out=True,
                                 limit=score_rows, system=f"seed {seed}")
            row = {"recipe": what, "lr": config.train.lr, "steps": summary["global_step"],
                   "batch": config.train.batch_size,
                   "warmup": config.train.warmup_steps, "seed": seed, "macro_f1": after.macro_f1,
                   "accuracy": after.accuracy, "rows": after.n, "train_loss": summary["train_loss"],
                   "threads": summary["threads"], "cpu_s": time.process_time() - cpu,
                   "wall_s": time.perf_counter() - wall}
            rows.append(row)
            print(json.dumps(row), flush=True)
    scores = [r["macro_f1"] for r in rows]
    print(f"{rows[0]['recipe']}, lr {rows[0]['lr']:g}, {rows[0]['steps']} steps, warm-up {rows[0]['warmup']}: "
          f"held-out macro-F1 on {rows[0]['rows']} rows: mean {statistics.mean(scores):.3f}, min {min(scores):.3f}, "
          f"max {max(scores):.3f} over {len(scores)} seeds")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
