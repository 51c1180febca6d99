"""Training throughput: korllama's path vs a plain reproduction of the original's, same tiny model, same rows.

    python benchmarks/train_throughput.py --data ../shared/data/dacon-loan/train.csv --rows 20000 --target 0.6
    python benchmarks/train_throughput.py --data ... --original-template seed   # each path with its own prompts

The original (Kor_llama) tokenised prompt + answer as one text, padded every row to the longest prompt and used
DataCollatorForLanguageModeling(mlm=False), so the loss covered the whole prompt. korllama masks the prompt
(loss on the answer only) and pads each batch to its own longest row. By default both paths render the same
prompts (the config's template), which isolates the loss and the padding; --original-template seed gives the
original path its own prompts too (korllama keeps the config's compact ones), the whole difference a user sees.
Each path runs in its own process (for its peak memory), with the same base model (its tokenizer trained on both
paths' prompts), rows, optimiser settings and seed, and is evaluated by rank scoring every --eval-every steps.
Printed: real (non-pad) tokens/s, steps and seconds to reach --target validation macro-F1, peak RSS, the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def path_config(args, path: str):
    from korllama.config import load_config

    template = args.original_template if path == "original" and args.original_template else args.template
    return load_config(args.config, [f"prompt.template={template}", "prompt.fields=null"] if template else None)


def benchmark_rows(args):
    """(train part, 1,000 validation rows): the same rows for both paths."""
    from korllama.data import read_table, split

    table = read_table(args.data)
    table = table.sample(args.rows, seed=0)
    train_part, valid_part, _ = split(table, 0.2, 0)
    return train_part, valid_part.subset(valid_part.frame.index[:1000])


def template_of(config, table):
    from korllama.prompts import get_template

    return get_template(table.spec, config.prompt.template, config.prompt.fields)


def build_base(args) -> None:
    """One tiny base for both paths, its tokenizer trained on both paths' prompts (the same model either way)."""
    from korllama.model import build_tiny

    train_part = benchmark_rows(args)[0]
    configs = {path_config(args, path).prompt.template: path_config(args, path) for path in ("korllama", "original")}
    texts = [text for config in configs.values() for text in template_of(config, train_part).render(train_part)]
    build_tiny(texts, Path(args.workdir) / "base", path_config(args, "korllama").model.tiny, seed=0,
               labels=list("ABCDEFG"))


def run_path(args) -> dict:
    import torch
    from sklearn.metrics import f1_score
    from transformers import DataCollatorForLanguageModeling

    from korllama.model import load_base
    from korllama.predict import predict_labels, score
    from korllama.prompts import answer
    from korllama.training.collate import collator, tokenize

    torch.manual_seed(0)
    config = path_config(args, args.path)
    train_part, valid_part = benchmark_rows(args)
    template = template_of(config, train_part)
    prompts, valid_prompts = template.render(train_part), template.render(valid_part)
    model, tokenizer = load_base(config.model, Path(args.workdir) / "base", for_training=True)
    labels = train_part.labels.tolist()
    if args.path == "korllama":
        rows = tokenize(tokenizer, prompts, labels, 4096)
        rows = [{"input_ids": i, "labels": y} for i, y in zip(rows["input_ids"], rows["labels"])]
        collate = collator(tokenizer)
    else:  # the original: one text, loss everywhere, every row padded to the longest one
        texts = [p + answer(y) + tokenizer.eos_token for p, y in zip(prompts, labels)]
        longest = max(len(x) for x in tokenizer(texts)["input_ids"])
        tokenizer.padding_side = "right"  # as the original padded: after the text, loss masked by the collator
        encoded = tokenizer(texts, padding="max_length", max_length=longest)
        rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(encoded["input_ids"], encoded["attention_mask"])]
        collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = input_ids, pads -> -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    generator = torch.Generator().manual_seed(0)
    classes = train_part.spec.label.classes
    tokens_per_row = sum(len(x) for x in tokenizer(prompts[:2000])["input_ids"]) / min(len(prompts), 2000)
    real_tokens, train_seconds, reached, history = 0, 0.0, None, []
    step = 0
    while step < args.max_steps and reached is None:
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(order) - config.train.batch_size + 1, config.train.batch_size):
            began = time.perf_counter()
            batch = collate([rows[i] for i in order[start:start + config.train.batch_size]])
            warm = min(1.0, (step + 1) / max(config.train.warmup_steps, 1))
            for group in optimizer.param_groups:
                group["lr"] = config.train.lr * warm
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - began
            real_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else \
                int((batch["input_ids"] != tokenizer.pad_token_id).sum())
            step += 1
            if step % args.eval_every == 0:
                pred = predict_labels(score(model, tokenizer, valid_prompts, classes, 256), classes)
                f1 = float(f1_score(valid_part.labels, pred, labels=classes, average="macro", zero_division=0))
                history.append((step, round(train_seconds, 1), round(f1, 4)))
                if f1 >= args.target:
                    reached = (step, train_seconds)
                    break
            if step >= args.max_steps:
                break
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": args.path, "template": config.prompt.template, "tokens_per_row": tokens_per_row,
            "valid_rows": len(valid_part), "steps": step, "train_seconds": train_seconds,
            "real_tokens_per_s": real_tokens / train_seconds, "reached": reached, "history": history,
            "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="dacon-tiny")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--template", help="another prompt template for both paths (e.g. seed: long prompts)")
    parser.add_argument("--original-template", help="the original path's prompts only (seed: the original's own)")
    parser.add_argument("--target", type=float, default=0.70, help="validation macro-F1 to reach")
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--workdir", default="runs/bench-train")
    parser.add_argument("--path", choices=["korllama", "original"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path:  # a child process: one path, one JSON line
        print(json.dumps(run_path(args)))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    build_base(args)
    results = {}
    for path in ("korllama", "original"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--path", path], capture_output=True,
                             text=True, check=True)
        results[path] = json.loads(out.stdout.strip().splitlines()[-1])
    setup = f"config {args.config}"
    print(f"{setup}, {args.rows} rows of {args.data}, target macro-F1 {args.target}, "
          f"eval every {args.eval_every} steps on {results['korllama']['valid_rows']} held-out rows, "
          f"max {args.max_steps} steps")
    for path, r in results.items():
        reached = f"reached at step {r['reached'][0]} after {r['reached'][1]:.0f}s" if r["reached"] else \
            f"not reached in {r['steps']} steps ({r['train_seconds']:.0f}s; best {max(h[2] for h in r['history'])})"
        print(f"{path:9}: template {r['template']} ({r['tokens_per_row']:.0f} prompt tokens/row), "
              f"{r['real_tokens_per_s']:9.0f} real tokens/s, {reached}, peak RSS {r['peak_rss_mb']:.0f} MB")
    k, o = results["korllama"], results["original"]
    print(f"tokens/s ratio korllama/original: {k['real_tokens_per_s'] / o['real_tokens_per_s']:.2f}x")
    if k["reached"] and o["reached"]:
        print(f"time to macro-F1 {args.target}: {o['reached'][1] / k['reached'][1]:.1f}x faster with korllama")
    elif k["reached"]:  # the original ran out of steps: its time is at least what it spent
        print(f"time to macro-F1 {args.target}: more than {o['train_seconds'] / k['reached'][1]:.1f}x faster with "
              "korllama (the original did not reach it)")


if __name__ == "__main__":
    main()
