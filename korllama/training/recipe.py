"""The recipe: `train(config, run_dir)` reads the table, renders prompts, builds or loads the base model
(LoRA-wrapped when `config.lora` is set) and runs the transformers Trainer.

We keep the Trainer rather than own the loop (torchtune's choice) because it carries what users of this toolkit
need from one config: accelerate's DDP/FSDP/DeepSpeed, gradient accumulation, mixed precision, checkpoint +
RNG-state resume. Its hooks are used as designed: the tokenised held-out prompts are the real `eval_dataset`,
`evaluate` is overridden to rank-score them (macro-F1 instead of a loss; training/trainer.py), and callbacks verify
checkpoints, keep the best weights and draw progress (training/callbacks.py). Training writes the run and nothing
about it: the model card and the training curve are written by the caller (the CLI, the demo) after train().
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from torch.utils.tensorboard import SummaryWriter
from transformers import TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from korllama.bases import run_record
from korllama.config import RunConfig, config_to_yaml, load_config
from korllama.data import Table
from korllama.decision import fit_decision
from korllama.errors import KorllamaError
from korllama.io import write_text
from korllama.layout import RunDir
from korllama.model import build_tiny, load_base, wrap_lora
from korllama.run import Run, data_fingerprint
from korllama.scoring import label_tokens, score
from korllama.spec import spec_to_yaml
from korllama.training.callbacks import KeepBest, RichProgress, VerifyCheckpoint
from korllama.training.collate import collator, distinct_examples, tokenize, tokenize_head
from korllama.training.hardware import threads_for, training_precision
from korllama.training.losses import class_weighted_loss, class_weights, head_class_weights
from korllama.training.trainer import GradeTrainer


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


RESUMABLE_CHANGES = ("name", "train.eval_batch_size", "train.logging_steps")


def has_dropout(model) -> bool:
    """The model drops activations in training (a Dropout module, LoRA's lora_dropout, or the attention's own
    config.attention_dropout): each row then draws its own mask, so a batch's identical rows are not one row."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return any(float(getattr(config, name, 0) or 0) > 0 for name in ("attention_dropout", "hidden_dropout",
                                                                          "dropout"))


def base_record(config: RunConfig) -> dict:
    """Where the base model came from: a named PyPI base's package, version and GGUF sha256 (korllama.bases), else
    the folder or hub id as configured ("tiny": built in the run's base/)."""
    return run_record(config.model.base) or {"name": config.model.base}


def fit_run_decision(run: Run, eval_part: Table, eval_prompts: list[str], proba: np.ndarray | None):
    """Fit the macro-F1 decision rule (korllama.decision) on the eval rows' probabilities under the kept weights and
    store it in the run. The rows' IDs go with it: `evaluate` never judges the rule on them. After a resume the
    best evaluation may predate this process; then the kept weights score the eval rows once more."""
    if proba is None:
        kept = Run.load(run.root, allow_unfinished=True)  # the run finishes once its rule is stored
        proba = score(kept.model, kept.tokenizer, eval_prompts, run.classes, run.config.train.eval_batch_size)
    rule = fit_decision(proba, eval_part.labels.tolist(), run.classes, ids=eval_part.ids.tolist())
    rule.save(run.dir.decision)
    return rule


def resumed_config(run: RunDir, asked: RunConfig | None) -> RunConfig:
    """The run's own config.yaml; a command line that would change what is trained is refused, naming the key."""
    if not run.is_run:
        raise KorllamaError(f"--resume: {run} is not a korllama run (no config.yaml); start it without --resume.")
    saved = load_config(run.config, saved=True)
    if asked is not None:
        for key, old, new in _differences(saved.model_dump(mode="json"), asked.model_dump(mode="json")):
            if key not in RESUMABLE_CHANGES:
                raise KorllamaError(f"--resume continues {run} with its own config.yaml, which has {key} = "
                                    f"{old!r}, but the config given here has {new!r}; drop --config (and that "
                                    "override) to resume, or train a new run with another --out.")
    return saved


def _differences(old: dict, new: dict, prefix: str = ""):
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def resolve_run(config: str | Path | None, overrides: list[str], out: str | Path | None, resume: bool,
                overwrite: bool) -> tuple[RunConfig | None, Path]:
    """What `korllama train` trains, and where: the named config with `overrides` applied; with `resume` and no
    config, the run's own config.yaml (the overrides, if any, applied to it; None: `train` reads it itself). The run
    folder is `out`, or runs/<config name>."""
    if resume and overwrite:
        raise KorllamaError("--resume continues a run and --overwrite replaces it: choose one.")
    if resume and out is None and config is None:
        raise KorllamaError("--resume needs --out: the run directory to continue.")
    if resume and config is None and RunDir(out).is_run:
        found = load_config(RunDir(out).config, overrides, saved=True) if overrides else None
    else:
        found = load_config(config, overrides) if config is not None or overrides else None
    if found is None and not resume:
        raise KorllamaError("train needs --config: a YAML file or a built-in name (e.g. --config demo).")
    return found, Path(out) if out is not None else Path("runs") / found.name


def train(config: RunConfig | None, run_dir: str | Path, resume: bool = False, table: Table | None = None,
          overwrite: bool = False) -> dict:
    """Run the recipe; returns the summary written to the run's train_summary.json.

    `resume` continues the newest complete checkpoint with the run's own config (`config`, if given, must agree);
    `overwrite` replaces a korllama run at `run_dir`: the new run is trained beside it and takes its place only when
    it has finished, so a bad table or a failed training leaves the old run as it was; a run folder holding files
    korllama does not write is refused. A run that fails before its first checkpoint leaves nothing
    behind. `table`: the configured table when the caller has already read it. The model card and the training
    curve are not written here: korllama.card.document_run writes them for a finished run."""
    state = PartialState()
    run = RunDir(run_dir)
    replaced = None  # with --overwrite: the old run, replaced only once the new one has finished
    if resume:
        if run.finished:
            raise KorllamaError(f"{run} finished at step {run.read_summary().get('global_step', '?')}: there is "
                                "nothing to resume; train a new run with another --out, or pass --overwrite "
                                "(without --resume) to train it again.")
        config = resumed_config(run, config)
        resume_from = run.last_complete_checkpoint()
        if resume_from is None:
            raise KorllamaError(f"--resume: {run.checkpoints} holds no checkpoint to resume from.")
        run.verify_weights(run.base, run.weights(config.lora is not None), resume_from)
        check_resumable(resume_from)
    else:
        if config is None:
            raise KorllamaError("train needs --config (a YAML file or a built-in name such as demo).")
        if overwrite and run.is_run:
            replaced = run
            if replaced.foreign():
                raise KorllamaError(f"{run} holds files korllama did not write ({', '.join(run.foreign()[:3])}), and "
                                    "--overwrite replaces only a run's own files; move them, or choose another --out.")
            # trained beside, renamed into place at the end: the old run stays whole until the new one is
            run = RunDir(run.root.with_name(f".{run.root.name}.korllama-overwrite"))
            if state.is_main_process:
                shutil.rmtree(run.root, ignore_errors=True)  # what a killed --overwrite left: korllama's own
        run.check_new()
        resume_from = None
    state.wait_for_everyone()  # every process has checked the folder before the main process writes into it
    existed = run.root.is_dir()
    try:
        summary = _train(config, run, resume_from, table, state)
        if replaced is not None and state.is_main_process:
            _replace(replaced.root, run.root)
        state.wait_for_everyone()
        return summary
    except BaseException:
        if not resume and state.is_main_process and run.last_complete_checkpoint() is None:
            if existed:  # the user's empty folder stays; what this run put in it goes
                for child in run.root.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(run.root, ignore_errors=True)
        raise


def check_resumable(checkpoint: Path) -> None:
    """The Trainer's own state files of `checkpoint` (optimizer, scheduler, RNG states) load as plain tensors, as
    the Trainer will load them (weights_only, numpy's arrays allowed): a truncated or pickled file is one sentence
    naming it, before any training, never a traceback that suggests weights_only=False."""
    from transformers.trainer_pt_utils import safe_globals

    for path in sorted([*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]):
        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise KorllamaError(f"{path} is damaged or not the Trainer's own state ({reason}), so the run cannot "
                                f"resume from it; remove {checkpoint.name} to resume from an earlier checkpoint, or "
                                "train again with --overwrite.") from None


def _replace(old: Path, new: Path) -> None:
    """Put the finished run `new` (trained beside) in the place of the run `old`: two renames, then the old run
    goes. A kill between the renames leaves the old run whole under a hidden name beside it."""
    gone = old.with_name(f".{old.name}.korllama-replaced")
    shutil.rmtree(gone, ignore_errors=True)
    old.rename(gone)
    new.rename(old)
    shutil.rmtree(gone, ignore_errors=True)


def cpu_minutes_before(checkpoint: Path | None) -> float:
    """The CPU minutes a resumed run's curve had reached: the last `eval_cpu_minutes` in the checkpoint's
    trainer_state.json (0 for a new run, or one trained before korllama logged them)."""
    if checkpoint is None:
        return 0.0
    history = json.loads((checkpoint / "trainer_state.json").read_text("utf-8")).get("log_history", [])
    return next((e["eval_cpu_minutes"] for e in reversed(history) if "eval_cpu_minutes" in e), 0.0)


def _train(config: RunConfig, folder: RunDir, resume_from: Path | None, table: Table | None, state) -> dict:
    started, cpu_started = time.perf_counter(), time.process_time()  # process_time: every thread's CPU time
    cpu_before = cpu_minutes_before(resume_from)
    run = Run(config, folder.root, table=table)
    table = run.training_table()
    if not table.has_labels:
        raise KorllamaError(f"{table.source} has no {table.spec.label.name} column: training needs graded rows.")
    parts = run.split()
    train_part, valid_part = parts.train, parts.valid
    eval_part = run.eval_sample(valid_part)
    template, classes = run.template, run.classes
    train_prompts, eval_prompts = template.render(train_part), template.render(eval_part)

    base = config.model.base
    if base == "tiny":
        base = str(folder.base)
        with state.main_process_first():  # one process builds the tokenizer and the random model
            if state.is_main_process and not (folder.base / "config.json").is_file():
                build_tiny(train_prompts, folder.base, config.model.tiny, seed=config.train.seed, labels=classes)
                folder.record_weights(folder.base)
    set_seed(config.train.seed)  # LoRA's A matrices and a new head draw from torch's RNG, before the Trainer seeds it
    model, tokenizer = load_base(config.model, base, for_training=True, labels=classes)
    head = config.model.head == "classifier"  # one output per label: the labels' tokens play no part
    if not head:
        label_tokens(tokenizer, classes)  # fail now, not after training, if two labels are the same tokens
    if config.lora is not None:
        model = wrap_lora(model, config.lora)

    examples = (train_prompts, train_part.labels.tolist(), None)
    if config.train.distinct_prompts and head and state.num_processes > 1:  # as config's grad_accum check
        raise KorllamaError("train.distinct_prompts with model.head classifier trains in one process only: the "
                            "head's weighted loss is not yet normalised across processes; train it without "
                            "accelerate launch, or without train.distinct_prompts.")
    if config.train.distinct_prompts:  # each distinct (prompt, label) once, weighted by its rows: the same loss
        examples = distinct_examples(*examples[:2])
    dataset = Dataset.from_dict(
        tokenize_head(tokenizer, *examples[:2], classes, config.train.max_length, weights=examples[2]) if head else
        tokenize(tokenizer, *examples[:2], config.train.max_length, weights=examples[2]))
    eval_dataset = Dataset.from_dict({"input_ids": tokenizer(eval_prompts)["input_ids"],
                                      "label": eval_part.labels.tolist()})
    compute_loss_func = head_weight = None
    if config.train.class_weights and head:
        head_weight = head_class_weights(train_part.labels, classes)
    elif config.train.class_weights:
        compute_loss_func = class_weighted_loss(class_weights(tokenizer, train_part.labels, classes))

    if state.is_main_process:
        folder.root.mkdir(parents=True, exist_ok=True)
        write_text(folder.config, config_to_yaml(config))
        write_text(folder.spec, spec_to_yaml(run.spec))  # the run scores the same from any folder
    device = next(model.parameters()).device
    merged = config.train.merge_repeats and not has_dropout(model)  # exact only without dropout: said in the summary
    trainer = GradeTrainer(
        model=model, args=training_arguments(config, folder.root, device, getattr(model.config, "hidden_size", None)),
        train_dataset=dataset,
        eval_dataset=eval_dataset, processing_class=tokenizer,
        data_collator=collator(tokenizer, merge_repeats=merged),
        compute_loss_func=compute_loss_func, callbacks=[VerifyCheckpoint(folder, config.lora is not None, head),
                                                       KeepBest(folder, config.lora is not None)],
        classes=classes, eval_batch_size=config.train.eval_batch_size, cpu_started=cpu_started,
        cpu_minutes_before=cpu_before, head_weight=head_weight)
    if state.is_main_process:  # one event file, in this run's logs/ (not the env-var default of the Trainer)
        trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(folder.logs))))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # RichProgress shows the same, on one line
    trainer.add_callback(RichProgress())
    with threads_for(device, state.num_processes, config.train.threads) as threads:  # fixed: see hardware
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        evaluated = {e["step"] for e in trainer.state.log_history if "eval_macro_f1" in e}
        if trainer.state.global_step not in evaluated:
            trainer.evaluate()  # the last steps count too: the best model may be the final one

    summary = {}
    if state.is_main_process:
        tokenizer.save_pretrained(folder.tokenizer)
        folder.record_weights(folder.tokenizer)
        trainer.state.save_to_json(str(folder.trainer_state))
        best = json.loads(folder.best.read_text())
        decision = fit_run_decision(run, eval_part, eval_prompts, trainer.eval_proba.get(best["step"]))
        summary = {"global_step": trainer.state.global_step, "train_rows": len(train_part),
                   "train_examples": len(dataset),
                   "eval_rows": len(eval_part), "best_eval_macro_f1": best["eval_macro_f1"], "best_step": best["step"],
                   "train_loss": result.training_loss, "seconds": time.perf_counter() - started,
                   "cpu_seconds": time.process_time() - cpu_started, "cpu_seconds_before_resume": 60 * cpu_before,
                   "weights": "adapter" if config.lora is not None else "model", "template": template.name,
                   "head": config.model.head, "merged_repeats": merged,
                   "data": data_fingerprint(config, table), "decision": decision.valid_macro_f1,
                   "base": base_record(config), "threads": threads if device.type == "cpu" else None}
        write_text(folder.summary, json.dumps(summary, indent=2))  # written last: the run is finished
    state.wait_for_everyone()
    return summary
