"""Rank scoring vs the original's generation (max_new_tokens 100) on the same model and the same rows.

    python benchmarks/inference.py runs/dacon-tiny --base runs/dacon-tiny/base \
        --data ../shared/data/dacon-loan/train.csv

Three ways to grade the same held-out rows, one after the other in one process (so the ratios hold on a noisy
machine even when absolute times drift):
  rank scoring          korllama: one forward pass per batch, softmax over the label tokens (batch --batch-size)
  generation, batched   the original's GenerationConfig, left-padded batches of --batch-size (a generous version)
  generation, 1 by 1    the original's loop: one prompt per generate() call, up to 100 new tokens each
Printed: rows/s of each, the ratios, and generation's invalid rate and macro-F1 next to rank scoring's.

`--base RUN/base` scores the run's untrained base with the run's prompts: like the original's model (whose
README shows it running on for all 100 tokens before and after tuning) it never says EOS, so generation pays
for every new token. A tuned korllama model stops after the grade, which makes its generation cheaper.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from korllama.data import read_table, split
from korllama.evaluation import metrics
from korllama.predict import generate
from korllama.prompts import get_template
from korllama.run import Run
from korllama.scoring import predict_labels, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=200, help="held-out rows graded by every method")
    parser.add_argument("--one-by-one-rows", type=int, default=50,
                        help="of those, how many the 1-by-1 generation grades (it is slow; its rate is per row)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--template", help="another prompt template than the run's (e.g. seed, the original's)")
    parser.add_argument("--base", help="score this base model with the run's prompts instead (e.g. RUN/base: an "
                                       "untrained model never says EOS, so generation runs all 100 new tokens)")
    args = parser.parse_args()

    loaded = Run.load(args.run, args.base)

    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    table = split(read_table(args.data, config.data.spec), config.data.valid_fraction, config.data.split_seed)[1]
    table = table.sample(args.rows, seed=0)
    classes = table.spec.label.classes
    template = args.template or config.prompt.template
    fields = config.prompt.fields if template == config.prompt.template else None
    prompts = get_template(table.spec, template, fields).render(table)
    truth = table.labels.tolist()
    single = min(args.one_by_one_rows, args.rows)

    started = time.perf_counter()
    proba = score(model, tokenizer, prompts, classes, args.batch_size)
    score_s = time.perf_counter() - started
    started = time.perf_counter()
    generated, _ = generate(model, tokenizer, prompts, classes, args.batch_size)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    one_by_one = [generate(model, tokenizer, [p], classes, 1)[0][0] for p in prompts[:single]]
    single_s = time.perf_counter() - started

    ranked = metrics(truth, list(predict_labels(proba, classes)), classes, ordinal=table.spec.label.ordinal)
    sampled = metrics(truth, generated, classes)
    singles = metrics(truth[:single], one_by_one, classes)
    rates = {"rank": args.rows / score_s, "batched": args.rows / batched_s, "single": single / single_s}
    tokens = sum(len(x) for x in tokenizer(prompts)["input_ids"]) / len(prompts)
    model_name = f"{args.run} with base {args.base}" if args.base else args.run
    print(f"run {model_name}, template {template} ({tokens:.0f} prompt tokens per row), {args.rows} held-out rows "
          f"of {args.data}, batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"rank scoring        : {rates['rank']:9.1f} rows/s  macro-F1 {ranked.macro_f1:.4f}  invalid 0.0%")
    print(f"generation, batched : {rates['batched']:9.1f} rows/s  macro-F1 {sampled.macro_f1:.4f}  "
          f"invalid {sampled.invalid_rate:.1%}  (max_new_tokens 100, the original's sampling)")
    print(f"generation, 1 by 1  : {rates['single']:9.1f} rows/s  macro-F1 {singles.macro_f1:.4f}  "
          f"invalid {singles.invalid_rate:.1%}  (first {single} rows, one generate() call each)")
    print(f"speed-up vs batched generation: {rates['rank'] / rates['batched']:8.1f}x")
    print(f"speed-up vs 1-by-1 generation : {rates['rank'] / rates['single']:8.1f}x")


if __name__ == "__main__":
    main()
