"""RunDir: the one owner of a run directory's layout. Nothing else in korllama spells these names.

    RUN/config.yaml          the validated RunConfig the run was trained with (resume reads it back)
    RUN/base/                the tiny model before training (model.base: tiny only)
    RUN/model/ | adapter/    the best weights: a full save_pretrained folder, or a PEFT adapter (safetensors)
    RUN/tokenizer/           the tokenizer the weights were trained with
    RUN/checkpoints/         Trainer checkpoints (checkpoint-N/), for --resume
    RUN/best.json            which evaluation the kept weights come from
    RUN/train_summary.json   written last: its presence means the run finished
    RUN/trainer_state.json, RUN/logs/ (tensorboard), RUN/train_curve.png, RUN/decision.json, RUN/model_card.md
    RUN/references.json      the neutral value of every field (training medians / most frequent), for explain
"""

from __future__ import annotations

import json
from pathlib import Path

from korllama.errors import KorllamaError


class RunDir:
    """Paths of one run directory, and what state it is in."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- the layout --
    config = property(lambda self: self.root / "config.yaml")
    base = property(lambda self: self.root / "base")
    model = property(lambda self: self.root / "model")
    adapter = property(lambda self: self.root / "adapter")
    tokenizer = property(lambda self: self.root / "tokenizer")
    checkpoints = property(lambda self: self.root / "checkpoints")
    best = property(lambda self: self.root / "best.json")
    summary = property(lambda self: self.root / "train_summary.json")
    trainer_state = property(lambda self: self.root / "trainer_state.json")
    logs = property(lambda self: self.root / "logs")
    train_curve = property(lambda self: self.root / "train_curve.png")
    decision = property(lambda self: self.root / "decision.json")
    model_card = property(lambda self: self.root / "model_card.md")
    references = property(lambda self: self.root / "references.json")
    base_info = property(lambda self: self.root / "base.json")

    def weights(self, lora: bool) -> Path:
        """Where the kept weights go: adapter/ for LoRA, model/ for full training."""
        return self.adapter if lora else self.model

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"checkpoint-{step}"

    # -- what is there --
    @property
    def is_run(self) -> bool:
        return self.config.is_file()

    @property
    def finished(self) -> bool:
        return self.summary.is_file()

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text("utf-8"))

    def last_complete_checkpoint(self) -> Path | None:
        """The newest checkpoint whose trainer_state.json (the Trainer writes it last) is whole: a run killed while
        saving leaves a newer, partial folder, which the Trainer's own choice (the highest number) would take."""
        found = []
        for folder in self.checkpoints.glob("checkpoint-*"):
            step = folder.name.removeprefix("checkpoint-")
            try:
                json.loads((folder / "trainer_state.json").read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if step.isdigit():
                found.append((int(step), folder))
        return max(found)[1] if found else None

    def check_new(self) -> None:
        """A fresh training may only go into a folder that does not exist or is empty: never over a finished or a
        killed run (its stale checkpoints would be resumed from later), never into a folder of other files."""
        if self.root.exists() and not self.root.is_dir():
            raise KorllamaError(f"--out {self.root} is a file; a run needs a folder: choose another --out.")
        if not self.root.is_dir() or not any(self.root.iterdir()):
            return
        if self.finished:
            raise KorllamaError(f"{self.root} already holds a finished run; choose another --out, or pass "
                                "--overwrite to replace it.")
        if self.is_run:
            raise KorllamaError(f"{self.root} holds an unfinished run; continue it with --resume, choose another "
                                "--out, or pass --overwrite to start over.")
        raise KorllamaError(f"{self.root} is a folder of other files, not a korllama run; choose a new or empty "
                            "--out (korllama does not mix its files with others).")

    def require_run(self, way_out: str = "train one with `korllama train`, or pass a base model with --base") -> None:
        """Refuse a folder that is not a run; `way_out` ends the sentence (a command without --base says its own)."""
        if not self.is_run:
            raise KorllamaError(f"{self.root} is not a korllama run directory (no config.yaml); {way_out}.")

    def __str__(self) -> str:
        return str(self.root)
