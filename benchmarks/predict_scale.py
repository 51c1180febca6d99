"""Streaming prediction at scale: rows/s and peak memory of `korllama predict` on N rows, for several N; the same
rows predicted in memory (the path predict took before it streamed) to compare the outputs; and optionally the same
table predicted by several processes (`accelerate launch --num_processes P --cpu`).

    korllama data synth --rows 1000000 --out /tmp/1m.csv
    korllama train --config demo --out /tmp/scale-run
    python benchmarks/predict_scale.py /tmp/scale-run --data /tmp/1m.csv --rows 100000 1000000 \
        --compare 64197 --processes 2 --work /tmp/scale-bench

Each prediction is its own process, measured by `/usr/bin/time -v` (peak resident memory, wall time): the first N
rows of --data are copied to a file of their own, then `korllama predict RUN --data FILE --out OUT --proba` runs.
rows/s is the rows over the whole command's wall time (start-up, the validating first pass, reading, scoring,
writing). `--compare M` predicts the first M rows in memory (read_table, one score() call, one DataFrame; in its own
measured process) and compares them with the first M rows of the largest streamed output: the IDs, the labels,
and the probabilities (written rounded to 6 decimals: a row scored in another batch may round the other way, so
they are compared within 1.5e-6, and the identical lines are counted). `--processes P` predicts the smallest N with
P processes (one torch thread each) and compares that output with the one-process output. `--threads` (default
1): each process's torch threads (OMP_NUM_THREADS), 1 being the fastest on a busy shared machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TIME = "/usr/bin/time"
ROUNDING = 1.5e-6

IN_MEMORY = """
import sys
import pandas as pd
from korllama.data import read_table
from korllama.run import Run
from korllama.prompts import get_template
from korllama.scoring import predict_labels, score

run, data, out = sys.argv[1:4]
loaded = Run.load(run)
model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
table = read_table(data, config.data.spec)
spec = table.spec
prompts = get_template(spec, config.prompt.template, config.prompt.fields).render(table)
proba = score(model, tokenizer, prompts, spec.label.classes, 32)
frame = pd.DataFrame({spec.id.name: table.ids.to_numpy(), spec.label.name: predict_labels(proba, spec.label.classes)})
for i, c in enumerate(spec.label.classes):
    frame[f"P_{c}"] = proba[:, i].round(6)
frame.to_csv(out, index=False, encoding="utf-8")
"""


def head(source: Path, rows: int, target: Path) -> Path:
    """The header and the first `rows` rows of a CSV (one row a line, as korllama data synth writes them)."""
    if target.is_file():
        return target
    with source.open("rb") as src, target.open("wb") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)
    return target


def measured(command: list[str], env: dict | None = None) -> dict:
    """Run a command under /usr/bin/time -v: wall seconds and peak RSS (wait4's ru_maxrss: the largest process of
    the tree, so for accelerate launch the largest worker or the launcher)."""
    started = time.perf_counter()
    result = subprocess.run([TIME, "-v", *command], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return {"wall": wall, "rss_mib": rss / 1024, "stdout": result.stdout, "stderr": result.stderr}


def compare(got_path: Path, expected_path: Path, rows: int) -> dict:
    import numpy as np
    import pandas as pd

    got = pd.read_csv(got_path, dtype=str, nrows=rows, keep_default_na=False)
    expected = pd.read_csv(expected_path, dtype=str, nrows=rows, keep_default_na=False)
    p = [c for c in got.columns if c.startswith("P_")]
    difference = np.abs(got[p].to_numpy(float) - expected[p].to_numpy(float)).max()
    with got_path.open() as a, expected_path.open() as b:
        same_lines = sum(x == y for _, x, y in zip(range(rows + 1), a, b)) - 1  # less the header
    return {"rows": len(got), "ids_equal": got.iloc[:, 0].tolist() == expected.iloc[:, 0].tolist(),
            "labels_equal": int((got.iloc[:, 1] == expected.iloc[:, 1]).sum()), "max_p_difference": float(difference),
            "identical_lines": same_lines, "within_rounding": bool(difference <= ROUNDING)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", required=True, type=Path, help="a CSV, e.g. korllama data synth --rows 1000000")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--compare", type=int, default=64_197, help="rows predicted in memory too (0: none)")
    parser.add_argument("--processes", type=int, default=0, help="also predict the smallest N with P processes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/korllama-scale-bench"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (OMP_NUM_THREADS); 1 is fastest on a busy shared machine")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    korllama = [sys.executable, "-m", "korllama"]
    print(f"python {platform()}; {os.cpu_count()} CPUs; {args.threads} torch thread(s) per process; run {args.run}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    outputs = {}
    for rows in sorted(args.rows):
        data = head(args.data, rows, args.work / f"head-{rows}.csv")
        out = args.work / f"streamed-{rows}.csv"
        m = measured([*korllama, "predict", args.run, "--data", str(data), "--out", str(out), "--proba"])
        outputs[rows] = out
        print(f"streamed  {rows:>9,} rows: {m['wall']:8.1f} s, {rows / m['wall']:7.0f} rows/s, "
              f"peak RSS {m['rss_mib']:7.0f} MiB", flush=True)

    if args.compare:
        data = head(args.data, args.compare, args.work / f"head-{args.compare}.csv")
        out = args.work / f"in-memory-{args.compare}.csv"
        m = measured([sys.executable, "-c", IN_MEMORY, args.run, str(data), str(out)])
        print(f"in memory {args.compare:>9,} rows: {m['wall']:8.1f} s, {args.compare / m['wall']:7.0f} rows/s, "
              f"peak RSS {m['rss_mib']:7.0f} MiB", flush=True)
        largest = outputs[max(outputs)]
        c = compare(largest, out, args.compare)
        print(f"first {c['rows']:,} rows of the {max(outputs):,}-row stream vs in memory: IDs equal {c['ids_equal']}, "
              f"labels equal {c['labels_equal']:,}/{c['rows']:,}, identical lines {c['identical_lines']:,}, "
              f"max |P difference| {c['max_p_difference']:.1e} (within rounding: {c['within_rounding']})", flush=True)

    if args.processes > 1:
        rows = min(outputs)
        data = args.work / f"head-{rows}.csv"
        out = args.work / f"streamed-{rows}-{args.processes}p.csv"
        accelerate = Path(sys.executable).parent / "accelerate"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        m = measured([str(accelerate), "launch", "--num_processes", str(args.processes), "--num_machines", "1",
                      "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "-m", "korllama", "predict",
                      args.run, "--data", str(data), "--out", str(out), "--proba"], env=env)
        print(f"{args.processes} processes {rows:>9,} rows: {m['wall']:8.1f} s, {rows / m['wall']:7.0f} rows/s, "
              f"peak RSS (largest process) {m['rss_mib']:7.0f} MiB", flush=True)
        c = compare(out, outputs[rows], rows)
        print(f"{args.processes} processes vs 1 on {rows:,} rows: IDs equal {c['ids_equal']}, labels equal "
              f"{c['labels_equal']:,}/{c['rows']:,}, identical lines {c['identical_lines']:,}, max |P difference| "
              f"{c['max_p_difference']:.1e}", flush=True)


def platform() -> str:
    import platform as p

    return p.python_version()


if __name__ == "__main__":
    main()
