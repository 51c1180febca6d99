"""Rank scoring vs the original's generation (max_new_tokens 100) on the same model and the same rows.

    python benchmarks/inference.py runs/dacon-tiny --data ../shared/data/dacon-loan/train.csv --rows 200

Prints rows/s of each, the ratio, and generation's invalid rate and macro-F1 next to rank scoring's. Both run in
one process, one after the other, so the ratio holds on a noisy machine even when absolute times drift.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from korllama.data import read_table, split
from korllama.evaluate import metrics
from korllama.predict import generate, load_run, predict_labels, score
from korllama.prompts import get_template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--base", help="score this base model with the run's prompts instead (e.g. RUN/base: an "
                                       "untrained model never says EOS, so generation runs all 100 new tokens)")
    args = parser.parse_args()

    model, tokenizer, config = load_run(args.run, args.base)
    table = split(read_table(args.data, config.data.spec), config.data.valid_fraction, config.data.split_seed)[1]
    table = table.subset(table.frame.sample(n=args.rows, random_state=0).sort_index().index)
    classes = table.spec.label.classes
    prompts = get_template(table.spec, config.prompt.template, config.prompt.fields).render(table)
    truth = table.labels.tolist()

    started = time.perf_counter()
    proba = score(model, tokenizer, prompts, classes, args.batch_size)
    score_s = time.perf_counter() - started
    started = time.perf_counter()
    generated, _ = generate(model, tokenizer, prompts, classes, args.batch_size)
    generate_s = time.perf_counter() - started

    ranked = metrics(truth, list(predict_labels(proba, classes)), classes)
    sampled = metrics(truth, generated, classes)
    model_name = f"{args.run} with base {args.base}" if args.base else args.run
    print(f"run {model_name}, {args.rows} held-out rows of {args.data}, batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"rank scoring : {args.rows / score_s:10.1f} rows/s  macro-F1 {ranked['macro_f1']:.4f}  invalid 0.0%")
    print(f"generation   : {args.rows / generate_s:10.1f} rows/s  macro-F1 {sampled['macro_f1']:.4f}  "
          f"invalid {sampled['invalid_rate']:.1%}  (max_new_tokens 100, the original's sampling)")
    print(f"speed-up     : {generate_s / score_s:10.1f}x")


if __name__ == "__main__":
    main()
