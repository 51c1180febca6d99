"""Instruction-tune a causal LM on a graded table: answer-only loss, checkpoints that really hold the weights,
evaluation by rank-scoring macro-F1, the best model kept, resume.

`train(config, out_dir)` reads the table, renders prompts, builds or loads the base model (LoRA-wrapped when
`config.lora` is set), and runs the transformers Trainer. The run directory ends with config.yaml, adapter/
(LoRA) or model/ (full training), tokenizer/, trainer_state.json, logs/ (tensorboard), train_curve.png and
train_summary.json; checkpoints live in checkpoints/.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from korllama.config import RunConfig, config_to_yaml
from korllama.data import Table, read_table, split
from korllama.errors import ConfigError, KorllamaError
from korllama.io import write_text
from korllama.model import build_tiny, load_base, wrap_lora
from korllama.predict import encode_prompts, label_token_ids, predict_labels, score
from korllama.prompts import answer, get_template

CHECKPOINTS = "checkpoints"


# --- data -------------------------------------------------------------------------------------------------------

def load_training_table(config: RunConfig) -> Table:
    """The configured table, or the synthetic loan table when `data.train` is empty."""
    if config.data.train is not None:
        return read_table(config.data.train, config.data.spec)
    from korllama.schema import load_spec
    from korllama.synth import synthetic_table

    return synthetic_table(config.data.synth_rows, config.data.synth_seed, load_spec(config.data.spec))


def tokenize(tokenizer, prompts: list[str], labels: list[str], max_length: int) -> dict[str, list]:
    """input_ids = <s> prompt + answer + EOS; labels = -100 on the prompt, so only answer and EOS carry loss."""
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer([answer(y) for y in labels], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    input_ids, label_ids = [], []
    for p, a in zip(prompt_ids, answer_ids):
        input_ids.append(p + a + eos)
        label_ids.append([-100] * len(p) + a + eos)
    longest = max(len(x) for x in input_ids)
    if longest > max_length:
        raise ConfigError(f"The longest prompt is {longest} tokens, over train.max_length={max_length}; raise it "
                          "or choose a shorter template (prompt.template=compact).")
    return {"input_ids": input_ids, "attention_mask": [[1] * len(x) for x in input_ids], "labels": label_ids}


def pad_collate(pad_id: int):
    """Dynamic padding to the longest row of the batch (right side; labels padded with -100)."""
    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        batch = {"input_ids": torch.full((len(rows), width), pad_id), "attention_mask": torch.zeros(len(rows), width),
                 "labels": torch.full((len(rows), width), -100)}
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = torch.tensor(r["labels"])
        batch["attention_mask"] = batch["attention_mask"].long()
        return batch
    return collate


def class_weighted_loss(vocab_weights: torch.Tensor):
    """Token cross-entropy where each grade token's loss is scaled by its class weight (EOS and others: 1)."""
    def loss_fn(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits[:, :-1, :].float()
        targets = labels[:, 1:].to(logits.device)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               weight=vocab_weights.to(logits.device), ignore_index=-100, reduction="sum")
        return loss / (num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum())
    return loss_fn


# --- the trainer ------------------------------------------------------------------------------------------------

class GradeTrainer(Trainer):
    """A Trainer whose evaluation is rank scoring on held-out rows: macro-F1 and accuracy, the competition's metric."""

    def __init__(self, *args, eval_prompts: list[str], eval_truth: list[str], classes: list[str],
                 eval_batch_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_encoded = encode_prompts(self.processing_class, eval_prompts)  # once, not at every evaluation
        self.eval_truth, self.classes = eval_truth, classes
        self.eval_batch = eval_batch_size

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        started = time.perf_counter()
        proba = score(self.model, self.processing_class, None, self.classes, self.eval_batch,
                      encoded=self.eval_encoded)
        pred = predict_labels(proba, self.classes)
        metrics = {
            f"{metric_key_prefix}_macro_f1": float(f1_score(self.eval_truth, pred, labels=self.classes,
                                                            average="macro", zero_division=0)),
            f"{metric_key_prefix}_accuracy": float(accuracy_score(self.eval_truth, pred)),
            f"{metric_key_prefix}_rows_per_s": len(pred) / (time.perf_counter() - started),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics


class VerifyCheckpoint(TrainerCallback):
    """After every save, load the checkpoint's weights back and fail loudly if they are missing or all zero.

    The original project's checkpoints held a config but no adapter; this makes that impossible to miss.
    """

    def __init__(self, lora: bool):
        self.lora = lora

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            verify_weights(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.lora)


def verify_weights(folder: Path, lora: bool) -> int:
    """Number of tensors in the folder's safetensors weights; raises if absent, empty or (LoRA B) all zero."""
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if lora else "model.safetensors"
    path = folder / name
    if not path.is_file():
        raise KorllamaError(f"Checkpoint {folder} has no {name}: the weights were not saved.")
    tensors = load_file(path)
    if lora:
        tensors = {k: v for k, v in tensors.items() if "lora_" in k}
        trained = [v for k, v in tensors.items() if "lora_B" in k]  # B starts at zero: non-zero means trained
        if not tensors or not any(bool(v.abs().sum() > 0) for v in trained):
            raise KorllamaError(f"Checkpoint {folder}/{name} holds no trained LoRA tensors ({len(tensors)} found).")
    elif not tensors or all(bool(v.abs().sum() == 0) for v in tensors.values()):
        raise KorllamaError(f"Checkpoint {folder}/{name} is empty or all zero.")
    return len(tensors)


class KeepBest(TrainerCallback):
    """Keep the weights with the best validation macro-F1 in run_dir/adapter (or model), not the lowest loss."""

    def __init__(self, run_dir: Path, lora: bool, metric: str = "eval_macro_f1"):
        self.run_dir, self.metric = run_dir, metric
        self.target = run_dir / ("adapter" if lora else "model")
        self.record = run_dir / "best.json"
        # a run killed between removing the old best folder and renaming the new one in has a record but no folder
        self.best = json.loads(self.record.read_text())[metric] if self.record.is_file() and self.target.is_dir() \
            else -1.0

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero or metrics is None or metrics.get(self.metric, -1) <= self.best:
            return
        self.best = metrics[self.metric]
        staging = self.run_dir / f".{self.target.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        if processing_class is not None:  # a self-contained folder: from_pretrained needs nothing else
            processing_class.save_pretrained(staging)
        shutil.rmtree(self.target, ignore_errors=True)
        staging.rename(self.target)  # the folder appears whole
        write_text(self.record, json.dumps({self.metric: self.best, "step": state.global_step}))


class RichProgress(TrainerCallback):
    """One progress bar: step, loss, steps/s and ETA (tensorboard in logs/ has the rest)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self.started, self.first_step = time.perf_counter(), state.global_step
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if hasattr(self, "progress"):
            rate = (state.global_step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
            info = self.progress.tasks[0].fields["info"].split(" | ")[0]
            self.progress.update(self.task, completed=state.global_step, info=f"{info} | {rate:.2f} steps/s")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if hasattr(self, "progress") and logs:
            parts = [f"loss {logs['loss']:.4f}"] if "loss" in logs else []
            if "eval_macro_f1" in logs:
                parts.append(f"eval macro-F1 {logs['eval_macro_f1']:.4f}")
                self.progress.console.print(f"step {state.global_step}: eval macro-F1 {logs['eval_macro_f1']:.4f}, "
                                            f"accuracy {logs['eval_accuracy']:.4f}")
            if parts:
                self.progress.update(self.task, info="  ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):
        if hasattr(self, "progress"):
            self.progress.stop()


# --- the recipe -------------------------------------------------------------------------------------------------

def training_arguments(config: RunConfig, run_dir: Path, device: torch.device) -> TrainingArguments:
    t = config.train
    precision = t.precision
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision in ("fp16", "bf16") and device.type != "cuda":
        raise ConfigError(f"train.precision={precision} needs a CUDA GPU; use train.precision=auto or fp32.")
    return TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS), num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps, lr_scheduler_type=t.scheduler,
        optim=t.optim, bf16=precision == "bf16", fp16=precision == "fp16",
        eval_strategy="steps", eval_steps=t.eval_steps, logging_steps=t.logging_steps,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        dataloader_pin_memory=device.type == "cuda",
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        activation_checkpointing=t.gradient_checkpointing, seed=t.seed, data_seed=t.seed,
        report_to="none",  # tensorboard: a callback with this run's log dir (see train)
        remove_unused_columns=False, use_cpu=device.type == "cpu",
        disable_tqdm=True, dataloader_num_workers=0, save_only_model=False)


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json (the Trainer writes it last) is whole: a run killed while
    saving leaves a newer, partial checkpoint folder, which the Trainer's own choice (the highest number) would take."""
    found = []
    for folder in checkpoints.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        try:
            json.loads((folder / "trainer_state.json").read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if step.isdigit():
            found.append((int(step), folder))
    return max(found)[1] if found else None


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, table: Table | None = None) -> dict:
    """Run the recipe; returns the summary written to run_dir/train_summary.json. `table`: the configured table
    when the caller has already read it (else it is read here)."""
    from accelerate import PartialState
    from datasets import Dataset

    run_dir = Path(run_dir)
    state = PartialState()
    checkpoints = run_dir / CHECKPOINTS
    resume_from = last_complete_checkpoint(checkpoints) if resume else None
    if resume and resume_from is None:
        raise KorllamaError(f"--resume: {checkpoints} holds no checkpoint to resume from.")
    if not resume and (run_dir / "train_summary.json").exists():
        raise KorllamaError(f"{run_dir} already holds a finished run; choose another --out or pass --resume.")
    started = time.perf_counter()

    table = table if table is not None else load_training_table(config)
    if not table.has_labels:
        raise KorllamaError(f"{table.source} has no {table.spec.label.name} column: training needs graded rows.")
    train_part, valid_part = split(table, config.data.valid_fraction, config.data.split_seed)
    eval_part = valid_part.sample(config.train.eval_rows, seed=config.data.split_seed)
    template = get_template(table.spec, config.prompt.template, config.prompt.fields)
    train_prompts, eval_prompts = template.render(train_part), template.render(eval_part)
    classes = table.spec.label.classes

    base = config.model.base
    if base == "tiny":
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # shard/weight bars are noise for a model that loads in milliseconds
        base = str(run_dir / "base")
        with state.main_process_first():  # one process builds the tokenizer and the random model
            if state.is_main_process and not (run_dir / "base" / "config.json").is_file():
                build_tiny(train_prompts, run_dir / "base", config.model.tiny, seed=config.train.seed)
    model, tokenizer = load_base(config.model, base, for_training=True)
    label_token_ids(tokenizer, classes)  # fail now, not after training, if a label is several tokens
    if config.lora is not None:
        model = wrap_lora(model, config.lora)

    features = tokenize(tokenizer, train_prompts, train_part.labels.tolist(), config.train.max_length)
    features["length"] = [len(x) for x in features["input_ids"]]
    dataset = Dataset.from_dict(features)
    compute_loss_func = None
    if config.train.class_weights:
        counts = train_part.labels.value_counts().reindex(classes, fill_value=0).clip(lower=1)
        weights = torch.ones(len(tokenizer))
        weights[label_token_ids(tokenizer, classes)] = torch.tensor(
            (counts.sum() / (len(classes) * counts)).to_numpy(dtype=np.float32)) ** 0.5  # softened inverse frequency
        compute_loss_func = class_weighted_loss(weights)

    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", config_to_yaml(config))
    device = next(model.parameters()).device
    trainer = GradeTrainer(
        model=model, args=training_arguments(config, run_dir, device), train_dataset=dataset,
        eval_dataset=eval_prompts, processing_class=tokenizer, data_collator=pad_collate(tokenizer.pad_token_id),
        compute_loss_func=compute_loss_func, callbacks=[VerifyCheckpoint(config.lora is not None),
                                                       KeepBest(run_dir, config.lora is not None)],
        eval_prompts=eval_prompts, eval_truth=eval_part.labels.tolist(), classes=classes,
        eval_batch_size=config.train.eval_batch_size)
    if state.is_main_process:  # one event file, in this run's logs/ (not the env-var default of the Trainer)
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(run_dir / "logs"))))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # RichProgress shows the same, on one line
    trainer.add_callback(RichProgress())
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    evaluated = {e["step"] for e in trainer.state.log_history if "eval_macro_f1" in e}
    if trainer.state.global_step not in evaluated:
        trainer.evaluate()  # the last steps count too: the best model may be the final one

    summary = {}
    if state.is_main_process:
        tokenizer.save_pretrained(run_dir / "tokenizer")
        trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
        from korllama.report import plot_train_curve
        plot_train_curve(trainer.state.log_history, run_dir / "train_curve.png")
        best = json.loads((run_dir / "best.json").read_text())
        summary = {"global_step": trainer.state.global_step, "train_rows": len(train_part),
                   "eval_rows": len(eval_part), "best_eval_macro_f1": best["eval_macro_f1"], "best_step": best["step"],
                   "train_loss": result.training_loss, "seconds": time.perf_counter() - started,
                   "weights": "adapter" if config.lora is not None else "model", "template": template.name}
        write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2))
    state.wait_for_everyone()
    return summary
