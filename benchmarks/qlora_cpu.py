"""The original's recipe (configs/seed.yaml) on a real pretrained base on the CPU: the base in 4 bits (QLoRA, as the
original ran it) against the same run on the full-precision base; then the 4-bit run exported (issue 28 items 1-2).

    PYTHONPATH=. python benchmarks/qlora_cpu.py --data ../shared/data/dacon-loan/train.csv
    PYTHONPATH=. python benchmarks/qlora_cpu.py --data ... --steps 2 --eval-rows 20     # a quick look
    PYTHONPATH=. python benchmarks/qlora_cpu.py --data ... --exports-of RUN --keep DIR   # export a 4-bit RUN only

Each variant is one `korllama train --config seed` command in its own process (so its peak RSS is its own), with the
same overrides: model.base=smollm2-135m (the converted GGUF, korllama.bases), train.max_steps=--steps, and the
evaluation at the last step on --eval-rows held-out rows (the same rows for both: same split, same sample). The
recipe's warm-up is 1,000 steps, which would hold the lr below 3e-5 for 60 steps: --warmup (default 10% of the
steps, as configs/smollm2-lora*.yaml) replaces it. Everything else is the seed config as written: the seed prompt,
LoRA q+v r 8 alpha 16 dropout 0.1, lr 5e-4 cosine, weight decay 0.1, 4 x 4 rows a step, dtype and precision auto.
The variants differ in model.load_in_4bit only.

Printed per variant (one JSON line): the training's CPU seconds and wall seconds (train_summary.json: the steps and
the evaluation), the whole command's CPU seconds and peak RSS (wait4 of the child: loading, training, the model
card), the held-out macro-F1 and accuracy at the last step, the first and last logged losses. Then the 4-bit run is
exported both ways (`korllama export --merge-into dequantized`, the default, and `original`), each in its own process,
and per export its CPU seconds, peak RSS and the agreement of its scores with the run's printed (korllama.json's
check: the labels equal on what share of 200 held-out rows, max |dP|).
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

VARIANTS = {"4-bit": ["model.load_in_4bit=true"], "full": ["model.load_in_4bit=false"]}


def run(argv: list[str]) -> dict:
    """`python -m korllama ARGV` in a child process: its exit code, CPU seconds (user + system) and peak RSS (MB)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "korllama", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"korllama {' '.join(argv)} failed:\n{output[-3000:]}")
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the labelled table (../shared/data/dacon-loan/train.csv)")
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 10%% of --steps)")
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--variants", default="4-bit,full")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs and the export in this folder")
    parser.add_argument("--exports-of", type=Path, default=None,
                        help="train nothing: export this finished 4-bit run both ways")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="qlora-cpu-"))
    folder.mkdir(parents=True, exist_ok=True)
    common = [f"model.base={args.base}", f"train.max_steps={args.steps}", f"train.warmup_steps={warmup}",
              f"train.eval_steps={args.steps}", f"train.save_steps={args.steps}", f"train.eval_rows={args.eval_rows}",
              "train.eval_batch_size=16", f"train.logging_steps={min(10, args.steps)}"]
    runs = {} if args.exports_of is None else {"4-bit": args.exports_of}
    for name in [] if args.exports_of else args.variants.split(","):
        out = folder / f"run-{name}"
        argv = ["train", "--config", "seed", "--data", str(args.data), "--out", str(out), "--overwrite",
                *common, *VARIANTS[name]]
        measured = run(argv)
        summary = json.loads((out / "train_summary.json").read_text())
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        losses = [e["loss"] for e in history if "loss" in e]
        final = [e for e in history if "eval_macro_f1" in e][-1]
        runs[name] = out
        print(json.dumps({"variant": name, "command": "korllama " + " ".join(argv),
                          "train_cpu_s": round(summary["cpu_seconds"], 1), "train_wall_s": round(summary["seconds"], 1),
                          "command_cpu_s": measured["cpu_s"], "command_wall_s": measured["wall_s"],
                          "peak_rss_mb": measured["peak_rss_mb"], "eval_rows": summary["eval_rows"],
                          "eval_macro_f1": round(final["eval_macro_f1"], 4),
                          "eval_accuracy": round(final["eval_accuracy"], 4),
                          "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
                          "threads": summary["threads"], "load": os.getloadavg()[0]}), flush=True)
    for merge_into in ("dequantized", "original") if "4-bit" in runs else ():
        export = folder / f"export-4bit-{merge_into}"
        argv = ["export", str(runs["4-bit"]), "--out", str(export), "--overwrite", "--merge-into", merge_into]
        measured = run(argv)
        record = json.loads((export / "korllama.json").read_text())
        print(json.dumps({"command": "korllama " + " ".join(argv), "weights": record["weights"],
                          "dtype": record["dtype"], "check": record["check"], "command_cpu_s": measured["cpu_s"],
                          "command_wall_s": measured["wall_s"], "peak_rss_mb": measured["peak_rss_mb"],
                          "load": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
