"""CPU LoRA training speed on a real pretrained model: korllama's training path vs the plain path, lever by lever.

    python benchmarks/cpu_lora.py --data ../shared/data/dacon-loan/train.csv
    python benchmarks/cpu_lora.py --data ... --variants plain@1,answer-logits@1,bf16@1 --rounds 5 --steps 6
    python benchmarks/cpu_lora.py --check     # the equality checks only (no timing)

Model: SmolLM2-135M-Instruct (`model.base: smollm2-135m`, korllama.bases) with the original's LoRA (r 8, alpha 16,
dropout 0.1 on q_proj + v_proj), the prompt of configs/smollm2-lora-seed.yaml (compact, 3 fields, ~30 tokens a row) on
--rows rows of --data, batch 16, AdamW (the config's lr). Every variant is a real transformers Trainer on the same
model (a copy each, the same weights), the same rows and the same batches (same seed):

  plain          transformers Trainer + DataCollatorForLanguageModeling(mlm=False): loss on the whole text, logits
                 at every position, fp32 (what a plain reproduction of the original does)
  answer-only    Trainer + DataCollatorForSeq2Seq: right padding, loss on answer + EOS only (labels -100 on the
                 prompt), but still the model's own loss over full logits (korllama's path before this benchmark)
  answer-logits  korllama's GradeTrainer + its collator (korllama.training): left padding with explicit position ids,
                 logits only in the loss window (`logits_to_keep`: 3 columns for a grade + EOS), own cross-entropy
  packed         padding-free batches (DataCollatorWithFlattening: one row, positions restarting per row) with
                 logits only at the labelled positions; use_cache=False, so transformers' SDPA mask separates rows
  bf16           answer-logits under bf16 autocast (TrainingArguments(bf16=True) on CPU: AVX-512 BF16 / AMX)
  plain-bf16     plain under bf16 autocast (the bf16 lever alone)
  bf16-weights   bf16 with the frozen base weights stored in bf16 (korllama's `model.dtype: auto` for LoRA on a
                 bf16 CPU): autocast no longer casts 135M weights at every step; the LoRA weights stay float32
  bf16-compiled  bf16 with TrainingArguments(torch_compile=True) (inductor: fused element-wise ops; the first
                 steps compile, so give it more --steps)

A variant name may end in @N: run it with torch.set_num_threads(N) (default: --threads, else torch's own default,
one thread per core). `plain@2,plain@1` measures the threads lever.

The variants run in turns within one process: each round runs every variant for one warm-up step plus --steps
timed steps, so the machine's load (it is shared) hits all of them alike. Printed: every round's real (non-pad)
tokens per second of wall time and per second of this process's CPU time, the median per variant and its ratio to
the first variant, and the load average. On a busy machine the wall figures swing with the other jobs' load while
the CPU-time figures of one-thread variants measure the work itself (they are the steadier lever figures); with
several threads the CPU time also counts threads waiting for each other, so threads are judged on wall time.

Before timing, the checks (also `--check` alone): on one batch of the same rows, with dropout off, the loss of
answer-logits and packed equals answer-only's full-logits loss (max abs difference printed; tolerance 1e-4).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

VARIANTS = ("plain", "answer-only", "answer-logits", "packed", "bf16", "plain-bf16", "bf16-weights", "bf16-compiled")


def rows_and_model(args):
    """(model wrapped in LoRA, tokenizer, tokenised rows, config): SmolLM2 + the original's LoRA, --rows rows."""
    from korllama.config import load_config
    from korllama.data import read_table
    from korllama.model import load_base, wrap_lora
    from korllama.prompts import get_template
    from korllama.training.collate import tokenize

    config = load_config(args.config)
    table = read_table(args.data).sample(args.rows, seed=0)
    template = get_template(table.spec, config.prompt.template, config.prompt.fields)
    model, tokenizer = load_base(config.model, for_training=True)
    model = wrap_lora(model, config.lora)
    rows = tokenize(tokenizer, template.render(table), table.labels.tolist(), config.train.max_length)
    return model, tokenizer, rows, config


class Timed:
    """A Trainer mixin: at the end of every training step, the wall time, this process's CPU time (user + system,
    all its threads) and the real tokens of its batch."""

    marks: list

    def training_step(self, model, inputs, num_items_in_batch=None):
        tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.marks.append((time.perf_counter(), time.process_time(), tokens))
        return loss


def packed_loss(model, inputs, num_items_in_batch=None):
    """Loss of a padding-free batch (one row of all tokens) with logits only where a label follows."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    where = (labels[0, 1:] != -100).nonzero()[:, 0]  # column t's logits predict label t + 1
    logits = model(**inputs, logits_to_keep=where, use_cache=False).logits[0].float()
    loss = torch.nn.functional.cross_entropy(logits, labels[0, where + 1], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else len(where))


def make_trainer(variant: str, model, tokenizer, rows, config, args, workdir: str):
    from datasets import Dataset
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )

    from korllama.training.collate import collator
    from korllama.training.trainer import GradeTrainer

    class TimedTrainer(Timed, Trainer):
        pass

    class TimedGrade(Timed, GradeTrainer):
        pass

    class TimedPacked(Timed, GradeTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = packed_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

    training = TrainingArguments(
        output_dir=workdir, max_steps=args.steps + 1, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=config.train.lr, weight_decay=config.train.weight_decay,
        warmup_steps=0, lr_scheduler_type="constant", optim="adamw_torch", bf16="bf16" in variant,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        remove_unused_columns=False, use_cpu=True, torch_compile=variant.endswith("compiled"),
        disable_tqdm=True, dataloader_num_workers=0, seed=0, data_seed=0)
    if variant.startswith("plain"):  # the whole text is the target; pads (= EOS for SmolLM2) are masked by the collator
        data = Dataset.from_dict({"input_ids": rows["input_ids"]})
        return TimedTrainer(model=model, args=training, train_dataset=data,
                            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    data = Dataset.from_dict(rows)
    if variant == "answer-only":
        return TimedTrainer(model=model, args=training, train_dataset=data,
                            data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100,
                                                                 return_tensors="pt"))
    kwargs = dict(model=model, args=training, train_dataset=data, processing_class=tokenizer,
                  classes=list("ABCDEFG"), eval_batch_size=32)
    if variant == "packed":
        return TimedPacked(data_collator=DataCollatorWithFlattening(return_position_ids=True), **kwargs)
    return TimedGrade(data_collator=collator(tokenizer), **kwargs)


def variant_model(variant: str, model):
    """A copy of the LoRA model for one variant; bf16-weights: the frozen weights cast to bf16 (LoRA's stay fp32)."""
    model = copy.deepcopy(model)
    if variant.startswith("bf16-weights"):
        for param in model.parameters():
            if not param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    return model


def check(model, tokenizer, rows, batch: int) -> dict:
    """Loss of one batch (dropout off, no gradient) on each path; answer-only's full-logits loss is the reference."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from korllama.training.collate import collator
    from korllama.training.losses import answer_loss, loss_window

    features = [{"input_ids": rows["input_ids"][i], "labels": rows["labels"][i]} for i in range(batch)]
    model.eval()
    with torch.no_grad():
        right = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")(features)
        reference = model(**right, use_cache=False).loss.item()
        left = collator(tokenizer)(features)
        labels = left.pop("labels")
        keep = loss_window(labels)
        out = model(**left, logits_to_keep=keep, use_cache=False)
        windowed = answer_loss(out, labels[:, -keep:]).item()
        packed = packed_loss(model, DataCollatorWithFlattening(return_position_ids=True)(features)).item()
        flat = DataCollatorWithFlattening(return_position_ids=True)(features)
        flat.pop("labels")
        with_cache = model(**flat, use_cache=True).logits  # what happens when the cache is left on
        without = model(**flat, use_cache=False).logits
    model.train()
    return {"full logits (answer-only)": reference, "answer-logits": windowed, "packed": packed,
            "window columns": keep, "batch width": right["input_ids"].shape[1],
            "packed: logits differ with use_cache=True": float((with_cache - without).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/dacon-loan/train.csv")
    parser.add_argument("--config", default="smollm2-lora-seed")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per round (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, each NAME or NAME@THREADS")
    parser.add_argument("--threads", type=int, help="torch threads for variants without @N (default: torch's)")
    parser.add_argument("--check", action="store_true", help="the equality checks only")
    parser.add_argument("--workdir", default="runs/bench-cpu-lora")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted({v.split("@")[0] for v in variants} - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    import transformers

    transformers.logging.set_verbosity_error()
    model, tokenizer, rows, config = rows_and_model(args)
    lengths = [len(x) for x in rows["input_ids"]]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"SmolLM2-135M + LoRA r{config.lora.r}/a{config.lora.alpha:g} on {'+'.join(config.lora.target_modules)}, "
          f"{len(lengths)} rows of {args.data} ({config.prompt.template} prompt, {sum(lengths) / len(lengths):.1f} "
          f"tokens a row, {min(lengths)}-{max(lengths)}), batch {args.batch}, torch {torch.__version__}, "
          f"{threads} threads ({os.cpu_count()} CPUs), CPU capability {torch.backends.cpu.get_cpu_capability()}")
    checked = check(model, tokenizer, rows, args.batch)
    reference = checked["full logits (answer-only)"]
    print("check: " + ", ".join(f"{k} {v:.6f}" if isinstance(v, float) else f"{k} {v}" for k, v in checked.items()))
    for name in ("answer-logits", "packed"):
        diff = abs(checked[name] - reference)
        print(f"check: {name} loss - full-logits loss = {diff:.2e} ({'equal' if diff <= 1e-4 else 'NOT EQUAL'} "
              "within 1e-4)")
    if args.check:
        return

    from transformers.trainer_callback import PrinterCallback

    # each variant its own copy of the model: accelerate prepares a model once (the first Trainer's mixed precision
    # would stick to a shared one: bf16 autocast on all, or on none)
    trainers = {v: make_trainer(v.split("@")[0], variant_model(v, model), tokenizer, rows, config, args, args.workdir)
                for v in variants}
    for trainer in trainers.values():
        trainer.remove_callback(PrinterCallback)  # its end-of-training line
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    loads = []
    for round_ in range(args.rounds):
        for variant in variants:
            trainer = trainers[variant]
            trainer.marks = []
            torch.set_num_threads(int(variant.split("@")[1]) if "@" in variant else threads)
            trainer.train()
            torch.set_num_threads(threads)
            (w0, c0, _), *timed = trainer.marks  # the first step is the warm-up
            tokens = sum(n for _, _, n in timed)
            wall[variant].append(tokens / (timed[-1][0] - w0))
            cpu[variant].append(tokens / (timed[-1][1] - c0))
        loads.append(os.getloadavg()[0])
        print(f"round {round_ + 1} (load average {loads[-1]:.1f}), real tokens/s wall | per CPU-second: "
              + ", ".join(f"{v} {wall[v][-1]:,.0f} | {cpu[v][-1]:,.0f}" for v in variants), flush=True)
    first = variants[0]
    print(f"median real tokens/s over {args.rounds} rounds of {args.steps} steps (load average "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs), ratio to {first}:")
    print(f"  {'variant':16} {'wall':>8} {'ratio':>6}   {'CPU-s':>8} {'ratio':>6}")
    for variant in variants:
        w, c = statistics.median(wall[variant]), statistics.median(cpu[variant])
        print(f"  {variant:16} {w:8,.0f} {w / statistics.median(wall[first]):5.2f}x   {c:8,.0f} "
              f"{c / statistics.median(cpu[first]):5.2f}x")


if __name__ == "__main__":
    main()
