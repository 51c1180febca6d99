"""Rank scoring with and without the shared prefix (korllama.scoring, issue 27 item 3), on a real pretrained base.

    python benchmarks/shared_prefix.py [--base smollm2-135m] [--rows 64] [--batch-size 32] \
        [--templates seed compact compact:term,schedule_rate instructed:compact:term,schedule_rate] \
        [--labels 우수 보통 미흡]

For each template: the same distinct prompts of the real loan table (../shared/data/dacon-loan/train.csv), the base
model as converted (its probabilities need no training to be compared), scored by score(shared_prefix=False) (every
prompt whole) and score(shared_prefix=True) (the common token prefix run once, its KV cache reused), each timed
after a warm-up on the same rows, alternated, the fastest of --repeats runs each. Prints prompt tokens, the common
prefix, rows/s both ways, the speed-up, the max |dP| and whether the argmax labels agree; with --labels, the same
for those multi-token labels.
`instructed:TEMPLATE` puts the seed template's instruction paragraph (its text before "###Condition") before each
of TEMPLATE's prompts: a long instruction and a short row, the case the shared prefix is for.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from korllama.schema import load_spec

from korllama.config import ModelConfig
from korllama.data import read_table
from korllama.model import load_base
from korllama.prompts import get_template
from korllama.scoring import common_prefix, encode_prompts, score

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dacon-loan" / "train.csv"


def timed(plain, cached, repeats: int):
    """Both ways, alternated after a warm-up each; the fastest of `repeats` runs each (the machine is shared)."""
    plain(), cached()
    times = {plain: [], cached: []}
    for _ in range(repeats):
        for fn in (plain, cached):
            started = time.perf_counter()
            out = fn()
            times[fn].append(time.perf_counter() - started)
    return plain(), min(times[plain]), out, min(times[cached])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--templates", nargs="+", default=["seed", "compact", "compact:term,schedule_rate",
                                                             "instructed:compact:term,schedule_rate"])
    parser.add_argument("--labels", nargs="*", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_base(ModelConfig(base=args.base), for_training=False)
    spec = load_spec()
    table = read_table(args.data, spec)
    print(f"{args.base}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    for entry in args.templates:
        instructed = entry.startswith("instructed:")
        name, _, fields = entry.removeprefix("instructed:").partition(":")
        template = get_template(spec, name, fields.split(",") if fields else None)
        prompts = list(dict.fromkeys(template.render(table.sample(20 * args.rows, seed=0))))[:args.rows]
        if instructed:
            instruction = get_template(spec, "seed").text.split("###Condition")[0]
            prompts = [instruction + p for p in prompts]
        encoded = encode_prompts(tokenizer, prompts)
        shared = common_prefix(encoded)
        mean = np.mean([len(e) for e in encoded])
        for classes in [spec.label.classes, *([args.labels] if args.labels else [])]:
            plain, t_plain, cached, t_cached = timed(
                lambda c=classes, e=encoded: score(model, tokenizer, None, c, args.batch_size, encoded=e,
                                                   shared_prefix=False),
                lambda c=classes, e=encoded: score(model, tokenizer, None, c, args.batch_size, encoded=e,
                                                   shared_prefix=True),
                args.repeats)
            agree = (plain.argmax(1) == cached.argmax(1)).mean()
            print(f"{entry:28s} labels {'/'.join(classes):14s} {len(prompts)} distinct prompts, {mean:.1f} tokens, "
                  f"common prefix {shared}: plain {len(prompts) / t_plain:7.1f} rows/s, shared prefix "
                  f"{len(prompts) / t_cached:7.1f} rows/s ({t_plain / t_cached:.2f}x); max |dP| "
                  f"{np.abs(plain - cached).max():.1e}, labels agree {agree:.0%}", flush=True)


if __name__ == "__main__":
    main()
