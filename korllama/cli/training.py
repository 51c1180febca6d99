"""`korllama train` and `lora-info`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from korllama.cli.app import (
    ConfigArg,
    OverridesArg,
    app,
    console,
)
from korllama.errors import KorllamaError


@app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML or a built-in name (demo, "
                                                "dacon-tiny, seed, ...). With --resume: the run's own config.yaml "
                                                "is used, and this may only repeat it.")] = None,
    overrides: OverridesArg = None,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled table to train on (sets data.train).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<config name>); must be new "
                                                           "or empty.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its newest complete "
                                                          "checkpoint, with its own config.yaml.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the korllama run in --out (a folder of "
                                                                "other files is never replaced).")] = False,
):
    """Instruction-tune a model on a graded table (answer-only loss, verified checkpoints, best macro-F1 kept).

    Examples:
      korllama train --config configs/demo.yaml
      korllama train --config configs/dacon-tiny.yaml --data ../shared/data/dacon-loan/train.csv
      korllama train --out runs/demo-train --resume
      accelerate launch --num_processes 2 --cpu -m korllama train --config configs/demo.yaml
    """
    from korllama.card import document_run
    from korllama.outputs import check_place
    from korllama.run import Run
    from korllama.training import resolve_run, train

    extra = list(overrides or []) + ([f"data.train={data}"] if data else [])
    cfg, run_dir = resolve_run(config, extra, out, resume, overwrite)
    check_place(run_dir)  # a file, a device, /proc, inside another run: refused before any work
    summary = train(cfg, run_dir, resume=resume, overwrite=overwrite)
    if summary:  # the main process: the training curve and the model card, once the run is finished
        document_run(Run.load(run_dir))
        console.print(f"trained {summary['global_step']} steps in {summary['seconds']:.0f}s; best validation "
                      f"macro-F1 {summary['best_eval_macro_f1']:.4f} (step {summary['best_step']}) -> "
                      f"{escape(str(run_dir / summary['weights']))}")


@app.command("lora-info")
def lora_info(
    config: ConfigArg,
    overrides: OverridesArg = None,
):
    """Count trainable and total parameters of the configured model with LoRA, without weights or download.

    Builds the architecture on the meta device from model.architecture (a config.json, or a built-in name such as
    llama-2-ko-7b), with model.head: classifier its classification head (labels x hidden, trained in full), and
    prints the original project's line, e.g.:

      Trainable: 4194304 | total: 6860050432 | Percentage: 0.0611%
    """
    from korllama.config import load_config
    from korllama.model import format_parameter_report, parameter_report, skeleton, wrap_lora
    from korllama.spec import load_spec

    cfg = load_config(config, overrides)
    labels = len(load_spec(cfg.data.spec).label.classes) if cfg.model.head == "classifier" else None
    model = skeleton(_architecture(cfg.model), num_labels=labels)
    if cfg.lora is not None:
        model = wrap_lora(model, cfg.lora)
    sys.stdout.write(format_parameter_report(*parameter_report(model)) + "\n")


def _architecture(model_cfg) -> str | dict:
    """What lora-info builds: model.architecture when set, else the base's own config (a named base's, read from
    its GGUF's metadata without converting it, or a local folder's config.json); a base with no config to read
    here is one sentence saying what to set."""
    from korllama.bases import NAMED_BASES, base_config
    from korllama.model import BUILTIN_ARCHITECTURES

    if model_cfg.architecture is not None:
        return model_cfg.architecture
    base = model_cfg.base
    if base in NAMED_BASES:
        return base_config(base)
    if Path(base).expanduser().is_dir():
        return base
    what = ("'tiny', built at training time from the data" if base == "tiny"
            else f"{base!r}, not a local model folder (lora-info reads no hub)")
    raise KorllamaError(f"lora-info counts parameters from a model's config, but model.base is {what}; set "
                        f"model.base to a named base ({', '.join(NAMED_BASES)}) or a local model folder, or "
                        f"model.architecture to a config.json or a built-in name ({', '.join(BUILTIN_ARCHITECTURES)}).")
