"""`RunDir`: the one owner of a run folder's layout (nothing else in korllama spells these names), what state a
run is in, and the checksums of its weights. Light on purpose (no torch, no pandas): the CLI asks it whether a
folder is a run before any work.

    RUN/config.yaml          the validated RunConfig the run was trained with (resume reads it back)
    RUN/base/                the tiny model before training (model.base: tiny only)
    RUN/model/ | adapter/    the best weights: a full save_pretrained folder, or a PEFT adapter (safetensors)
    RUN/tokenizer/           the tokenizer the weights were trained with
    RUN/checkpoints/         Trainer checkpoints (checkpoint-N/), for --resume
    RUN/best.json            which evaluation the kept weights come from
    RUN/train_summary.json   written last: its presence means the run finished
    RUN/trainer_state.json, RUN/logs/ (tensorboard), RUN/train_curve.png, RUN/decision.json, RUN/model_card.md
    RUN/references.json      the neutral value of every field (training medians / most frequent), for explain
    RUN/spec.yaml            the table spec the run was trained with, templates inlined: the run reads its own copy
    RUN/weights.json         the sha256 of every file of base/, model/, adapter/, tokenizer/ and of the checkpoints'
                             safetensors, recorded as they are written; every load checks them (verify_weights)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from korllama.errors import KorllamaError
from korllama.io import sha256_file, user_permissions, write_text

DECISION_FILE = "decision.json"  # a macro-F1 decision rule (korllama.decision), in a run and in the trees' folder
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".pyx", ".so", ".pyd", ".dll", ".dylib", ".sh")
# keys of a Hugging Face or peft config that name classes to import from the folder (custom code)
CODE_KEYS = ("auto_map", "auto_mapping")


def code_in(folder: Path) -> str | None:
    """What in `folder` (searched whole) would make a loader run code: a Python or native file, or a config that
    maps classes to the folder's own code. None when it is data only. A run or an export folder someone sends is
    data (safetensors, JSON, YAML), never code: korllama refuses the rest instead of trusting it."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in CODE_SUFFIXES or path.name == "__pycache__":
            return f"{path} is code"
        if path.suffix == ".json" and path.is_file() and path.stat().st_size < 10_000_000:
            try:
                found = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError):
                continue  # not korllama's to judge here: the loader says what is wrong with it
            if isinstance(found, dict) and any(found.get(key) for key in CODE_KEYS):
                key = next(key for key in CODE_KEYS if found.get(key))
                return f"{path} maps classes to custom code ({key})"
    return None


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
    decision = property(lambda self: self.root / DECISION_FILE)
    model_card = property(lambda self: self.root / "model_card.md")
    references = property(lambda self: self.root / "references.json")
    weights_record = property(lambda self: self.root / "weights.json")
    spec = property(lambda self: self.root / "spec.yaml")

    OWN = ("config.yaml", "base", "model", "adapter", "tokenizer", "checkpoints", "best.json", "train_summary.json",
           "trainer_state.json", "logs", "train_curve.png", DECISION_FILE, "model_card.md", "references.json",
           "weights.json", "spec.yaml")  # every name above: what training and its card write

    def foreign(self) -> list[str]:
        """What the run folder holds that korllama does not write there (hidden temporary files excepted): a user's
        own files, which --overwrite must never delete."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.name not in self.OWN and not (p.name.startswith(".") and p.name.endswith(".tmp")))

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
    def trained_into(self) -> bool:
        """A run that training has written into, not merely a folder holding a config.yaml (examples/hiring holds
        one): what no command but `korllama train` may write into (korllama.outputs)."""
        return self.is_run and any(p.exists() for p in (self.summary, self.checkpoints, self.model, self.adapter,
                                                        self.tokenizer, self.base))

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

    def require_data_only(self) -> None:
        """Refuse a run that carries code (a .py file, a config with auto_map): a run is data, never code."""
        found = code_in(self.root)
        if found:
            raise KorllamaError(f"{self.root} is refused: {found}, and korllama never runs code from a run folder "
                                "(a run is safetensors, JSON and YAML); remove it, or train the run again.")

    def require_finished(self) -> None:
        """Refuse a run whose training did not finish (killed, or still running): its weights are whichever
        evaluation was best so far, and it has no decision rule or card yet."""
        if self.is_run and not self.finished:
            raise KorllamaError(f"{self.root} is an unfinished run (no {self.summary.name}: its training was stopped "
                                f"or is still going); finish it with `korllama train --out {self.root} --resume`, or "
                                "pass --allow-unfinished to use its best weights so far.")

    # -- the weights' checksums --
    def _weight_files(self, folder: Path) -> list[Path]:
        """The files of `folder` whose bytes the record covers: all of a weights folder (safetensors, config,
        tokenizer), only the safetensors of a checkpoint (its optimizer state is the Trainer's to read)."""
        if not folder.is_dir():
            return []
        pattern = "*.safetensors" if folder.parent == self.checkpoints else "*"
        return sorted(p for p in folder.glob(pattern) if p.is_file())

    def _recorded(self) -> dict[str, str] | None:
        if not self.weights_record.is_file():
            return None
        try:
            return json.loads(self.weights_record.read_text("utf-8"))["sha256"]
        except (ValueError, KeyError, TypeError):
            raise KorllamaError(f"{self.weights_record} is damaged (not the JSON korllama wrote), so the run's "
                                "weights cannot be verified; train the run again.") from None

    def record_weights(self, *folders: Path, incoming: Path | None = None) -> None:
        """Record the sha256 of the files of `folders` (the folders just written), keeping the other entries of
        folders that still exist (a checkpoint the Trainer rotated away leaves the record with it).

        `incoming`: a folder about to replace the one folder given (KeepBest's staging folder, renamed into place
        next): its files' hashes are accepted beside the current ones until the folder is recorded again, so a
        kill between the rename and the record leaves a run that still loads."""
        old = self._recorded() or {}
        replaced = folders if incoming is None else ()  # their old entries go, unless the new bytes are on their way
        record = {k: v for k, v in old.items()
                  if (self.root / k).parent.is_dir() and (self.root / k).parent not in replaced}
        for folder in folders:
            user_permissions(incoming or folder)  # safetensors writes 0600 whatever the umask
            for path in self._weight_files(incoming or folder):
                name = (folder / path.name).relative_to(self.root).as_posix()
                digest = sha256_file(path)
                before = old.get(name, [])
                record[name] = digest if incoming is None else sorted(
                    {digest, *([before] if isinstance(before, str) else before)})
        write_text(self.weights_record, json.dumps({"sha256": dict(sorted(record.items()))}, indent=1))

    def verify_weights(self, *folders: Path, allow_unrecorded: bool = False) -> None:
        """Refuse, naming the file, when a file of `folders` (default: base/, model/, adapter/, tokenizer/) differs
        from what the run recorded when it wrote it, is missing, or was never recorded. A run without a record
        (an older korllama's, or one whose record was removed) is refused unless `allow_unrecorded`: then it is
        loaded with a warning."""
        folders = folders or (self.base, self.model, self.adapter, self.tokenizer)
        record = self._recorded()
        if record is None and not any(folder.is_dir() for folder in folders):
            return  # no weights to verify: the loader says what is missing (an unfinished run)
        if record is None:
            if not allow_unrecorded:
                raise KorllamaError(f"{self.root} records no checksums of its weights (no {self.weights_record.name}: "
                                    "a run made by an older korllama, or its record was removed), so korllama "
                                    "cannot tell that they are the files training wrote; pass --allow-unrecorded to "
                                    "load them unverified.")
            warnings.warn(f"{self.root} records no checksums of its weights (a run made by an older korllama); "
                          "they are loaded unverified (--allow-unrecorded).", stacklevel=2)
            return
        for folder in folders:
            if not folder.is_dir():  # gone whole (a kill between KeepBest's delete and rename): the loader says so
                continue
            prefix = folder.relative_to(self.root).as_posix() + "/"
            expected = {k: v for k, v in record.items() if k.startswith(prefix) and "/" not in k[len(prefix):]}
            present = {p.relative_to(self.root).as_posix(): p for p in self._weight_files(folder)}
            for name in sorted(set(expected) | set(present)):
                if name not in present:
                    raise KorllamaError(f"{self.root / name} is missing: the run's weights are incomplete; train "
                                        "the run again.")
                if name not in expected:
                    if folder.parent == self.checkpoints:  # killed between the Trainer's save and its record
                        continue
                    raise KorllamaError(f"{self.root / name} was not written by the run's training (it is not in "
                                        f"{self.weights_record.name}); remove it, or train the run again.")
                accepted = expected[name] if isinstance(expected[name], list) else [expected[name]]
                if sha256_file(present[name]) not in accepted:
                    raise KorllamaError(f"{self.root / name} is not the file the run wrote (its sha256 differs from "
                                        f"{self.weights_record.name}: damaged, truncated or replaced); restore it "
                                        "or train the run again.")

    def __str__(self) -> str:
        return str(self.root)


class TreesDir(RunDir):
    """A tree baseline's folder (`korllama baseline --out`): the fitted trees beside their own evaluation, read by
    korllama.trees.Trees the way a run is read by korllama.run.Run.

        TREES/trees.json       what was fitted: the spec, the table and its split, the settings kept (its presence
                               marks the folder as a tree baseline)
        TREES/trees/           the fitted models (LightGBM's text format) and estimator.json: korllama.baseline.saved
        TREES/spec.yaml, TREES/decision.json, TREES/references.json, TREES/weights.json   as in a run
        TREES/metrics.json, TREES/predictions.csv   the evaluation on the held-out rows (korllama.evaluation)
    """

    record = property(lambda self: self.root / "trees.json")
    model = property(lambda self: self.root / "trees")

    OWN = ("trees.json", "trees", "spec.yaml", DECISION_FILE, "references.json", "weights.json")
    FOLDERS = ("trees",)  # of OWN, what is a folder

    @property
    def is_trees(self) -> bool:
        return self.record.is_file()

    @property
    def is_run(self) -> bool:  # not an LLM run: nothing but `korllama baseline` writes the trees
        return False

    @property
    def finished(self) -> bool:  # written last, as a run's train_summary.json
        return self.record.is_file()

    def read_record(self) -> dict:
        try:
            return json.loads(self.record.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise KorllamaError(f"{self.record} is damaged ({exc}); fit the trees again with `korllama "
                                "baseline`.") from None

    def verify_weights(self, *folders: Path, allow_unrecorded: bool = False) -> None:
        super().verify_weights(*(folders or (self.model,)), allow_unrecorded=allow_unrecorded)
