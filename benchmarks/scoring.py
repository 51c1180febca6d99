"""Rank scoring speed: single-token labels (the fast path) vs labels of several tokens, two ways.

    python benchmarks/scoring.py RUN --data FILE [--rows 512] [--batch-size 32] [--labels 우수 보통 미흡]

On the same model and the same prompts, one process, each timed after a warm-up:
  single     the spec's labels as they are (one token each for the loan grades): one pass, softmax over their logits
  kv-cache   korllama.scoring for multi-token labels: one pass over the prompt with its KV cache, the cache
             repeated once per label, every label continuation in one more (short) pass
  concat     the alternative: one batched pass over prompt+label rows (labels x rows sequences of full length)
The multi-token label set is --labels (default: Korean words, several tokens for a byte-level BPE). Both multi-token
ways must give the same probabilities (the max difference is printed).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from korllama.data import read_table
from korllama.prompts import get_template
from korllama.run import Run
from korllama.scoring import encode_prompts, label_tokens, left_padded_batches, pad_id_of, score


@torch.inference_mode()
def score_concat(model, tokenizer, encoded: list[list[int]], classes: list[str], batch_size: int) -> np.ndarray:
    """One pass over prompt + answer + EOS for every (row, label), summed log-probabilities of the completion."""
    labels = label_tokens(tokenizer, classes)
    rows = [p + c for p in encoded for c in labels.completions]
    sizes = [len(c) for _ in encoded for c in labels.completions]
    totals = np.zeros(len(rows))
    for index, ids, mask in left_padded_batches(rows, batch_size, pad_id_of(tokenizer)):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        longest = max(sizes[i] for i in index)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=longest + 1).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts the last `longest` tokens
        targets = ids[:, -longest:]
        picked = logp.gather(-1, targets[..., None]).squeeze(-1)
        keep = torch.arange(longest)[None, :] >= longest - torch.tensor([sizes[i] for i in index])[:, None]
        totals[index] = (picked * keep).sum(-1).double().numpy()
    totals = totals.reshape(len(encoded), len(classes))
    return torch.softmax(torch.tensor(totals), dim=-1).numpy()


def timed(fn, repeats: int = 2):
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--labels", nargs="+", default=["우수", "보통", "미흡"])
    args = parser.parse_args()

    loaded = Run.load(args.run)

    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    table = read_table(args.data, config.data.spec).sample(args.rows, seed=0)
    prompts = get_template(table.spec, config.prompt.template, config.prompt.fields).render(table)
    encoded = encode_prompts(tokenizer, prompts)
    own = table.spec.label.classes
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {len(prompts)} rows, {np.mean([len(e) for e in encoded]):.0f} prompt tokens on average, batch "
          f"{args.batch_size}")
    print(f"labels {own} ({'one token each' if label_tokens(tokenizer, own).single else 'several tokens'}); "
          f"multi-token labels {args.labels}: " + ", ".join(
              f"{c!r} {len(a)} tokens" for c, a in zip(args.labels, label_tokens(tokenizer, args.labels).answers)))
    _, single = timed(lambda: score(model, tokenizer, None, own, args.batch_size, encoded=encoded))
    cached, kv = timed(lambda: score(model, tokenizer, None, args.labels, args.batch_size, encoded=encoded))
    concat, cat = timed(lambda: score_concat(model, tokenizer, encoded, args.labels, args.batch_size))
    n = len(prompts)
    print(f"single-token labels (fast path):   {n / single:8.1f} rows/s")
    print(f"multi-token, prompt KV cache:      {n / kv:8.1f} rows/s  ({kv / single:.1f}x the fast path's time per row)")
    print(f"multi-token, prompt+label rows:    {n / cat:8.1f} rows/s  (KV cache is {cat / kv:.2f}x faster)")
    print(f"max |difference| between the two multi-token ways: {np.abs(cached - concat).max():.2e}")


if __name__ == "__main__":
    main()
