"""Trainer callbacks: every checkpoint's weights verified (the original project's held none), the best weights by
validation macro-F1 kept in the run, and one rich progress line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors import SafetensorError, safe_open
from transformers import TrainerCallback

from korllama.errors import KorllamaError
from korllama.io import write_text
from korllama.layout import RunDir


class VerifyCheckpoint(TrainerCallback):
    """After every save, check the checkpoint's weights and fail loudly if they are missing, untrained or broken.

    The original project's checkpoints held a config but no adapter; this makes that impossible to miss.
    """

    def __init__(self, run: RunDir | None, lora: bool, head: bool = False):
        self.run, self.lora, self.head = run, lora, head

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            check_trained(folder, self.lora, self.head)
            if self.run is not None:  # --resume checks these bytes before it continues from them
                self.run.record_weights(folder)


def check_trained(folder: Path, lora: bool, head: bool = False) -> int:
    """Number of tensors in the folder's safetensors weights; raises if absent, empty, untrained or not finite.

    Reads only what must be checked (safe_open, tensor by tensor): for LoRA every adapter tensor (small; B starts
    at zero, so a non-zero B means trained); for full weights the headers of all tensors and the values of the 1-D
    ones (norms and biases: kilobytes even for a 7B model, and one NaN step turns every weight NaN, them too).
    `head`: a classification head's weights (`score`, trained in full beside a LoRA adapter) must be there too, and
    finite: without them the run would grade with a random head."""

    name = "adapter_model.safetensors" if lora else "model.safetensors"
    path = Path(folder) / name
    if not path.is_file():
        raise KorllamaError(f"Checkpoint {folder} has no {name}: the weights were not saved.")
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            scores = [k for k in keys if ".score." in f".{k}"]  # the head: score.weight, or peft's copy of it
            if lora:
                keys = [k for k in keys if "lora_" in k]
                values = {k: f.get_tensor(k) for k in keys}
            else:
                values = {k: f.get_tensor(k) for k in keys if len(f.get_slice(k).get_shape()) == 1}
            if head:
                values |= {k: f.get_tensor(k) for k in scores}
    except SafetensorError as exc:
        raise KorllamaError(f"Checkpoint {path} cannot be read: {exc}.") from None
    if not keys:
        raise KorllamaError(f"Checkpoint {path} holds no {'LoRA ' if lora else ''}tensors.")
    if head and not scores:
        raise KorllamaError(f"Checkpoint {path} holds no classification head (`score`): the run would grade with an "
                            "untrained one.")
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
        self.run.record_weights(self.target, incoming=staging)  # the old bytes or these, until recorded below
        shutil.rmtree(self.target, ignore_errors=True)
        staging.rename(self.target)  # the folder appears whole
        self.run.record_weights(self.target)  # every later load checks these bytes
        write_text(self.run.best, json.dumps({self.metric: self.best, "step": state.global_step}))


class RichProgress(TrainerCallback):
    """One progress bar: step, loss, validation macro-F1, steps/s and ETA (tensorboard in logs/ has the rest)."""

    def __init__(self):
        self.progress = None
        self.loss = self.macro_f1 = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return

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
