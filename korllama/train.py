"""Instruction-tune a causal LM on a graded table: answer-only loss, checkpoints that really hold the weights,
evaluation by rank-scoring macro-F1, the best model kept, resume.

`train(config, run_dir)` reads the table, renders prompts, builds or loads the base model (LoRA-wrapped when
`config.lora` is set) and runs the transformers Trainer. We keep the Trainer rather than own the loop (torchtune's
choice) because it carries what users of this toolkit need from one config: accelerate's DDP/FSDP/DeepSpeed,
gradient accumulation, mixed precision, checkpoint + RNG-state resume. Its hooks are used as designed: the
tokenised held-out prompts are the real `eval_dataset`, `evaluate` is overridden to rank-score them (macro-F1, the
competition's metric, instead of a loss), and callbacks verify checkpoints, keep the best weights and draw progress.
The run directory's layout belongs to korllama.run.RunDir.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
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
from korllama.prompts import answer, get_template
from korllama.run import RunDir
from korllama.scoring import label_tokens, pad_id_of, predict_labels, score

# --- data -------------------------------------------------------------------------------------------------------

def load_training_table(config: RunConfig) -> Table:
    """The configured table, or the synthetic loan table when `data.train` is empty."""
    if config.data.train is not None:
        return read_table(config.data.train, config.data.spec)
    from korllama.schema import load_spec
    from korllama.synth import synthetic_table

    return synthetic_table(config.data.synth_rows, config.data.synth_seed, load_spec(config.data.spec))


def data_fingerprint(config: RunConfig, table: Table) -> dict:
    """What the run was trained on, so that `evaluate --held-out` can tell the same file from another one."""
    found = {"source": str(config.data.train) if config.data.train else "synthetic", "rows": len(table)}
    if config.data.train is not None and Path(config.data.train).is_file():
        found["sha256"] = hashlib.sha256(Path(config.data.train).read_bytes()).hexdigest()
    return found


def tokenize(tokenizer, prompts: list[str], labels: list[str], max_length: int) -> dict[str, list]:
    """input_ids = <s> prompt + answer + EOS; labels = -100 on the prompt, so only the answer's tokens (all of
    them, for a label of several tokens) and EOS carry loss. The collator pads and builds the attention mask."""
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
    return {"input_ids": input_ids, "labels": label_ids}


def collator(tokenizer) -> LeftPaddedCollator:
    """Dynamic padding to the longest row of the batch, on the LEFT, with explicit position ids (see
    LeftPaddedCollator): every row's answer ends in the last column, so the loss needs logits there only."""
    return LeftPaddedCollator(pad_id_of(tokenizer))


class LeftPaddedCollator:
    """Pad a batch of tokenised rows (`tokenize`) on the left to its longest row: input_ids (pad id), labels (-100),
    attention_mask and position_ids = attention_mask.cumsum(-1) - 1, clamped at 0 — real tokens count from 0 whatever
    the padding, exactly as korllama.scoring scores, so training and scoring see the same positions.

    Left padding puts every row's answer + EOS in the batch's last columns, so GradeTrainer.compute_loss asks the
    model for logits there only (`logits_to_keep`): the lm_head (49,152 wide for SmolLM2) and the cross-entropy run
    over a few columns instead of every prompt position, with the same loss.

    Padding-free batches (rows packed into one, positions restarting per row) are also correct on CPU in
    transformers 5.24 with use_cache=False (its SDPA mask separates the rows by their position ids), but slower here:
    the rows are short and of nearly one length, so the dense block-diagonal mask of a packed row costs more than
    the few pad tokens it saves (benchmarks/cpu_lora.py measures both)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, width - n:] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, width - n:] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[row, width - n:] = 1
        return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
                "labels": labels}


def loss_window(labels: torch.Tensor) -> int:
    """How many of the batch's last columns the loss needs logits for: from the column before the first labelled
    one (its logits predict that label) to the end. With left padding that is the longest answer + EOS, plus one."""
    labelled = (labels != -100).any(dim=0).nonzero()
    if not len(labelled):
        return 1
    return labels.shape[1] - int(labelled[0, 0]) + 1


def shifted_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of `logits` (batch, columns, vocab) against `labels` of the same columns: column t's
    logits predict label t + 1. Summed and divided by `num_items_in_batch` (the labelled tokens of the whole
    accumulated batch, as the Trainer counts them) when given, else by this batch's labelled tokens."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           weight=None if weight is None else weight.to(logits.device), ignore_index=-100,
                           reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != -100).sum().clamp(min=1)
    return loss / num_items_in_batch


def answer_loss(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """The default loss: token cross-entropy where labels are set (answer + EOS)."""
    return shifted_loss(outputs.logits, labels, num_items_in_batch)


def class_weighted_loss(vocab_weights: torch.Tensor):
    """Token cross-entropy where each label's first token's loss is scaled by its class weight (others: 1)."""
    def loss_fn(outputs, labels, num_items_in_batch=None):
        return shifted_loss(outputs.logits, labels, num_items_in_batch, weight=vocab_weights)
    return loss_fn


def class_weights(tokenizer, train_labels, classes: list[str]) -> torch.Tensor:
    """Softened inverse class frequency on each label's first token (they must differ to be told apart)."""
    first = label_tokens(tokenizer, classes).first_ids
    if len(set(first)) != len(first):
        raise ConfigError("train.class_weights weights each label's first token, but some labels start with the "
                          "same token for this tokenizer; set train.class_weights=false.")
    counts = train_labels.value_counts().reindex(classes, fill_value=0).clip(lower=1)
    weights = torch.ones(len(tokenizer))
    weights[first] = torch.tensor((counts.sum() / (len(classes) * counts)).to_numpy(dtype=np.float32)) ** 0.5
    return weights


# --- the trainer ------------------------------------------------------------------------------------------------

class GradeTrainer(Trainer):
    """A Trainer whose evaluation is rank scoring of its eval_dataset (prompt ids + true label): macro-F1 and
    accuracy, the competition's metric; and which stops at the first non-finite loss, naming the step."""

    def __init__(self, *args, classes: list[str], eval_batch_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.classes, self.eval_batch = classes, eval_batch_size
        self.eval_proba: dict[int, np.ndarray] = {}  # step -> probabilities of the eval rows (for the decision rule)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not math.isfinite(float(loss)):
            raise KorllamaError(f"The training loss became {float(loss)} at step {self.state.global_step + 1}: the "
                                "weights are no longer usable. Lower train.lr (or check the data); resume from an "
                                "earlier checkpoint with --resume, or start over with --overwrite.")
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss where the labels are, with logits only there: the model runs with `logits_to_keep` = the
        batch's loss window (loss_window; 3 columns for a one-token grade + EOS when the collator pads on the left),
        and `compute_loss_func` (class_weighted_loss) or answer_loss gets those logits and the same columns of the
        labels. Equal to the model's own full-logits loss on the batch; normalised by `num_items_in_batch` when the
        Trainer counts it, so gradient accumulation and several processes scale it as they would the model's."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        keep = loss_window(labels)
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        loss_fn = self.compute_loss_func or answer_loss
        loss = loss_fn(outputs, labels[:, -keep:], num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as Trainer.compute_loss does
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        started = time.perf_counter()
        proba = score(self.model, self.processing_class, None, self.classes, self.eval_batch,
                      encoded=dataset["input_ids"])
        truth, pred = dataset["label"], predict_labels(proba, self.classes)
        if dataset is self.eval_dataset:
            self.eval_proba[self.state.global_step] = proba
        metrics = {
            f"{metric_key_prefix}_macro_f1": float(f1_score(truth, pred, labels=self.classes, average="macro",
                                                            zero_division=0)),
            f"{metric_key_prefix}_accuracy": float(accuracy_score(truth, pred)),
            f"{metric_key_prefix}_rows_per_s": len(pred) / (time.perf_counter() - started),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics


class VerifyCheckpoint(TrainerCallback):
    """After every save, check the checkpoint's weights and fail loudly if they are missing, untrained or broken.

    The original project's checkpoints held a config but no adapter; this makes that impossible to miss.
    """

    def __init__(self, lora: bool):
        self.lora = lora

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            verify_weights(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.lora)


def verify_weights(folder: Path, lora: bool) -> int:
    """Number of tensors in the folder's safetensors weights; raises if absent, empty, untrained or not finite.

    Reads only what must be checked (safe_open, tensor by tensor): for LoRA every adapter tensor (small; B starts
    at zero, so a non-zero B means trained); for full weights the headers of all tensors and the values of the 1-D
    ones (norms and biases: kilobytes even for a 7B model, and one NaN step turns every weight NaN, them too)."""
    from safetensors import SafetensorError, safe_open

    name = "adapter_model.safetensors" if lora else "model.safetensors"
    path = Path(folder) / name
    if not path.is_file():
        raise KorllamaError(f"Checkpoint {folder} has no {name}: the weights were not saved.")
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            if lora:
                keys = [k for k in keys if "lora_" in k]
                values = {k: f.get_tensor(k) for k in keys}
            else:
                values = {k: f.get_tensor(k) for k in keys if len(f.get_slice(k).get_shape()) == 1}
    except SafetensorError as exc:
        raise KorllamaError(f"Checkpoint {path} cannot be read: {exc}.") from None
    if not keys:
        raise KorllamaError(f"Checkpoint {path} holds no {'LoRA ' if lora else ''}tensors.")
    broken = next((k for k, v in values.items() if not bool(torch.isfinite(v).all())), None)
    if broken is not None:
        raise KorllamaError(f"Checkpoint {path} holds non-finite values (NaN or inf) in {broken}.")
    if lora and not any(bool(v.abs().sum() > 0) for k, v in values.items() if "lora_B" in k):
        raise KorllamaError(f"Checkpoint {path} holds no trained LoRA tensors ({len(keys)} found).")
    if not lora and values and all(bool(v.abs().sum() == 0) for v in values.values()):
        raise KorllamaError(f"Checkpoint {path} is all zero.")
    return len(keys)


class KeepBest(TrainerCallback):
    """Keep the weights with the best validation macro-F1 in the run's adapter/ (or model/), not the lowest loss."""

    def __init__(self, run: RunDir, lora: bool, metric: str = "eval_macro_f1"):
        self.run, self.metric, self.target = run, metric, run.weights(lora)
        # a run killed between removing the old best folder and renaming the new one in has a record but no folder
        self.best = json.loads(run.best.read_text())[metric] if run.best.is_file() and self.target.is_dir() \
            else -1.0

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero or metrics is None or metrics.get(self.metric, -1) <= self.best:
            return
        self.best = metrics[self.metric]
        staging = self.target.with_name(f".{self.target.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        if processing_class is not None:  # a self-contained folder: from_pretrained needs nothing else
            processing_class.save_pretrained(staging)
        shutil.rmtree(self.target, ignore_errors=True)
        staging.rename(self.target)  # the folder appears whole
        write_text(self.run.best, json.dumps({self.metric: self.best, "step": state.global_step}))


class RichProgress(TrainerCallback):
    """One progress bar: step, loss, validation macro-F1, steps/s and ETA (tensorboard in logs/ has the rest)."""

    def __init__(self):
        self.progress = None
        self.loss = self.macro_f1 = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self.started, self.first_step = time.perf_counter(), state.global_step
        self.progress.start()

    def _info(self, state) -> str:
        rate = (state.global_step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        parts = [f"loss {self.loss:.4f}"] if self.loss is not None else []
        if self.macro_f1 is not None:
            parts.append(f"eval macro-F1 {self.macro_f1:.4f}")
        return "  ".join([*parts, f"{rate:.2f} steps/s"])

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, info=self._info(state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        self.loss = logs.get("loss", self.loss)
        if "eval_macro_f1" in logs:
            self.macro_f1 = logs["eval_macro_f1"]
            self.progress.console.print(f"step {state.global_step}: eval macro-F1 {logs['eval_macro_f1']:.4f}, "
                                        f"accuracy {logs['eval_accuracy']:.4f}")
        self.progress.update(self.task, info=self._info(state))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()


# --- the recipe -------------------------------------------------------------------------------------------------

def cpu_bf16() -> bool:
    """The CPU has bf16 matrix instructions (AVX-512 BF16 or AMX), which oneDNN uses for bf16 matmuls: measured on
    this project's Xeon (AMX), a 483 x 576 x 1536 matmul runs at 862 GFLOP/s in bf16 vs 130 in fp32 on one core."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers of torch.cpu: absent means unknown, so no
        return False


CPU_BF16_MIN_WIDTH = 512  # hidden size from which bf16 autocast pays on a CPU (measured at 128 and 576, see below)


def training_precision(requested: str, device: torch.device, width: int | None = None) -> str:
    """fp32, fp16 or bf16 for the Trainer. auto: bf16 (fp16 before Ampere) on a GPU; on a CPU with bf16 matrix
    instructions (cpu_bf16) bf16 autocast for a model at least CPU_BF16_MIN_WIDTH wide (`width`, its hidden size:
    LoRA on SmolLM2, 576 wide, ran 1.4-1.6x faster, benchmarks/cpu_lora.py), fp32 for narrower ones (the tiny Llama,
    128 wide, trained 1.35x SLOWER under autocast: its matmuls are too small to win back the casts); else fp32. The
    weights stay float32 either way; autocast runs the matmuls in bf16."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        wide = width is None or width >= CPU_BF16_MIN_WIDTH
        return "bf16" if device.type == "cpu" and cpu_bf16() and wide else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use train.precision=auto, bf16 or fp32.")
    if requested == "bf16" and device.type != "cuda" and not (device.type == "cpu" and cpu_bf16()):
        raise ConfigError("train.precision=bf16 needs a CUDA GPU or a CPU with bf16 instructions (AVX-512 BF16 or "
                          "AMX); use train.precision=auto or fp32.")
    return requested


def training_arguments(config: RunConfig, run_dir: Path, device: torch.device,
                       width: int | None = None) -> TrainingArguments:
    t = config.train
    precision = training_precision(t.precision, device, width)
    return TrainingArguments(
        output_dir=str(RunDir(run_dir).checkpoints), num_train_epochs=t.epochs, max_steps=t.max_steps,
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

def cpu_threads(processes: int = 1) -> int:
    """Torch threads for CPU work now: one per core that other jobs leave idle, at least one, never more than the
    current setting (so OMP_NUM_THREADS, torch.set_num_threads or accelerate's per-process share stay upper bounds).

    Other jobs are counted as the runnable tasks of /proc/loadavg (median of a few samples, less this one) rather
    than the load average, which also counts this process's own recent work. Measured on the shared 2-core machine
    (benchmarks/cpu_lora.py, RESULTS.md): with other jobs keeping 6-12 tasks runnable, SmolLM2 + LoRA trained
    several times faster on one thread than on two — every op's two halves wait for each other while one is
    descheduled. Where /proc/loadavg does not exist the current setting is kept."""
    current = torch.get_num_threads()
    try:
        samples = []
        for _ in range(5):
            with open("/proc/loadavg", encoding="ascii") as fh:
                samples.append(int(fh.read().split()[3].split("/")[0]))
            time.sleep(0.01)
    except (OSError, ValueError, IndexError):
        return current
    others = max(0, round(statistics.median(samples)) - 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(current, (cores - others) // max(processes, 1)))


@contextmanager
def threads_for(device: torch.device, processes: int = 1):
    """Within: torch threads set by cpu_threads() on a CPU device (restored after); yields the number used."""
    if device.type != "cpu":
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    threads = cpu_threads(processes)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


# Settings a resumed run may change: they alter what is shown, not what is trained.
RESUMABLE_CHANGES = ("name", "train.eval_batch_size", "train.logging_steps")


def base_record(config: RunConfig) -> dict:
    """Where the base model came from: a named PyPI base's package, version and GGUF sha256 (korllama.bases), else
    the folder or hub id as configured ("tiny": built in the run's base/)."""
    from korllama.bases import run_record

    return run_record(config.model.base) or {"name": config.model.base}


def fit_run_decision(run: RunDir, eval_part: Table, eval_prompts: list[str], proba: np.ndarray | None,
                     batch_size: int):
    """Fit the macro-F1 decision rule (korllama.decision) on the eval rows' probabilities under the kept weights and
    store it in the run. The rows' IDs go with it: `evaluate` never judges the rule on them. After a resume the
    best evaluation may predate this process; then the kept weights score the eval rows once more."""
    from korllama.decision import fit_decision
    from korllama.predict import load_run

    classes = eval_part.spec.label.classes
    if proba is None:
        model, tokenizer, _ = load_run(run.root)
        proba = score(model, tokenizer, eval_prompts, classes, batch_size)
    rule = fit_decision(proba, eval_part.labels.tolist(), classes, ids=eval_part.ids.tolist())
    rule.save(run.decision)
    return rule


def resumed_config(run: RunDir, asked: RunConfig | None) -> RunConfig:
    """The run's own config.yaml; a command line that would change what is trained is refused, naming the key."""
    from korllama.config import load_config

    if not run.is_run:
        raise KorllamaError(f"--resume: {run} is not a korllama run (no config.yaml); start it without --resume.")
    saved = load_config(run.config)
    if asked is not None:
        for key, old, new in _differences(saved.model_dump(mode="json"), asked.model_dump(mode="json")):
            if key not in RESUMABLE_CHANGES:
                raise KorllamaError(f"--resume continues {run} with its own config.yaml, but this command sets {key} "
                                    f"to {new!r} (the run has {old!r}); drop that setting to resume, or train a "
                                    "new run with another --out.")
    return saved


def _differences(old: dict, new: dict, prefix: str = ""):
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def train(config: RunConfig | None, run_dir: str | Path, resume: bool = False, table: Table | None = None,
          overwrite: bool = False) -> dict:
    """Run the recipe; returns the summary written to the run's train_summary.json.

    `resume` continues the newest complete checkpoint with the run's own config (`config`, if given, must agree);
    `overwrite` replaces a korllama run at `run_dir`. A run that fails before its first checkpoint leaves nothing
    behind. `table`: the configured table when the caller has already read it."""
    from accelerate import PartialState

    state = PartialState()
    run = RunDir(run_dir)
    if resume:
        config = resumed_config(run, config)
        resume_from = run.last_complete_checkpoint()
        if resume_from is None:
            raise KorllamaError(f"--resume: {run.checkpoints} holds no checkpoint to resume from.")
    else:
        if config is None:
            raise KorllamaError("train needs --config (a YAML file or a built-in name such as demo).")
        if overwrite and run.is_run and state.is_main_process:
            shutil.rmtree(run.root)
        run.check_new()
        resume_from = None
    state.wait_for_everyone()  # every process has checked the folder before the main process writes into it
    existed = run.root.is_dir()
    try:
        return _train(config, run, resume_from, table, state)
    except BaseException:
        if not resume and state.is_main_process and run.last_complete_checkpoint() is None:
            if existed:  # the user's empty folder stays; what this run put in it goes
                for child in run.root.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(run.root, ignore_errors=True)
        raise


def _train(config: RunConfig, run: RunDir, resume_from: Path | None, table: Table | None, state) -> dict:
    from datasets import Dataset

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
        base = str(run.base)
        with state.main_process_first():  # one process builds the tokenizer and the random model
            if state.is_main_process and not (run.base / "config.json").is_file():
                build_tiny(train_prompts, run.base, config.model.tiny, seed=config.train.seed, labels=classes)
    model, tokenizer = load_base(config.model, base, for_training=True)
    label_tokens(tokenizer, classes)  # fail now, not after training, if two labels are the same tokens
    if config.lora is not None:
        model = wrap_lora(model, config.lora)

    dataset = Dataset.from_dict(tokenize(tokenizer, train_prompts, train_part.labels.tolist(),
                                         config.train.max_length))
    eval_dataset = Dataset.from_dict({"input_ids": tokenizer(eval_prompts)["input_ids"],
                                      "label": eval_part.labels.tolist()})
    compute_loss_func = None
    if config.train.class_weights:
        compute_loss_func = class_weighted_loss(class_weights(tokenizer, train_part.labels, classes))

    if state.is_main_process:
        run.root.mkdir(parents=True, exist_ok=True)
        write_text(run.config, config_to_yaml(config))
    device = next(model.parameters()).device
    trainer = GradeTrainer(
        model=model, args=training_arguments(config, run.root, device, getattr(model.config, "hidden_size", None)),
        train_dataset=dataset,
        eval_dataset=eval_dataset, processing_class=tokenizer, data_collator=collator(tokenizer),
        compute_loss_func=compute_loss_func, callbacks=[VerifyCheckpoint(config.lora is not None),
                                                       KeepBest(run, config.lora is not None)],
        classes=classes, eval_batch_size=config.train.eval_batch_size)
    if state.is_main_process:  # one event file, in this run's logs/ (not the env-var default of the Trainer)
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(run.logs))))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # RichProgress shows the same, on one line
    trainer.add_callback(RichProgress())
    with threads_for(device, state.num_processes) as threads:  # on a busy CPU, fewer threads train faster
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        evaluated = {e["step"] for e in trainer.state.log_history if "eval_macro_f1" in e}
        if trainer.state.global_step not in evaluated:
            trainer.evaluate()  # the last steps count too: the best model may be the final one

    summary = {}
    if state.is_main_process:
        tokenizer.save_pretrained(run.tokenizer)
        trainer.state.save_to_json(str(run.trainer_state))
        from korllama.plots import plot_train_curve
        plot_train_curve(trainer.state.log_history, run.train_curve)
        best = json.loads(run.best.read_text())
        decision = fit_run_decision(run, eval_part, eval_prompts, trainer.eval_proba.get(best["step"]),
                                    config.train.eval_batch_size)
        summary = {"global_step": trainer.state.global_step, "train_rows": len(train_part),
                   "eval_rows": len(eval_part), "best_eval_macro_f1": best["eval_macro_f1"], "best_step": best["step"],
                   "train_loss": result.training_loss, "seconds": time.perf_counter() - started,
                   "weights": "adapter" if config.lora is not None else "model", "template": template.name,
                   "data": data_fingerprint(config, table), "decision": decision.valid_macro_f1,
                   "base": base_record(config), "threads": threads if device.type == "cpu" else None}
        write_text(run.summary, json.dumps(summary, indent=2))  # written last: the run is finished
        from korllama.card import IMPORTANCE_SECONDS, write_model_card
        print(f"korllama: writing {run.model_card.name} (the validation rows scored again and explained: up to "
              f"about {IMPORTANCE_SECONDS} s more)", file=sys.stderr, flush=True)
        write_model_card(run, table=table, on_error="warn")  # model_card.md, references.json
    state.wait_for_everyone()
    return summary
