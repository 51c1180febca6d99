"""`Trees`: a tree baseline's folder (`korllama baseline --out`) read once, with the interface every consumer takes
from a `Run` (korllama.system.System): its spec and labels, `predict_proba(table)`, its decision rule, the neutral
references explain uses, the split it was fitted on and its provenance. So `korllama predict`, `evaluate`,
`explain`, `serve` and `compare` grade with the trees as they grade with an LLM run. The folder's layout belongs to
korllama.layout.TreesDir; the saved estimator to korllama.baseline.saved.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from korllama.baseline.saved import load_trees
from korllama.choices import Decision, Mode
from korllama.data import Split, Table, split
from korllama.data.stream import TableChunks
from korllama.decision import DecisionRule, decision_choice
from korllama.errors import KorllamaError
from korllama.layout import TreesDir
from korllama.prompts import known_fields
from korllama.references import load_references
from korllama.spec import TableSpec, load_spec


class Trees:
    """A fitted, tuned tree baseline, read from its folder; the estimator is loaded on first use (checked against
    the checksums `korllama baseline` recorded)."""

    kind = Mode.TREES
    base = None  # never a bare base model: the trees are always the fitted ones
    template = None  # the trees read the table's columns, not a prompt
    max_tokens = None
    tuned = True

    def __init__(self, root: str | Path, allow_unrecorded: bool = False):
        self.dir = TreesDir(root)
        self.allow_unrecorded = allow_unrecorded
        self.record: dict = self.dir.read_record()
        self.spec_source = str(self.dir.spec.resolve())
        self.spec: TableSpec = load_spec(self.dir.spec)
        self.classes: list[str] = list(self.spec.label.classes)

    @classmethod
    def load(cls, root: str | Path, allow_unrecorded: bool = False) -> Trees:
        folder = TreesDir(root)
        if not folder.is_trees:
            raise KorllamaError(f"{root} is not a tree baseline's folder (no {folder.record.name}); fit one with "
                                "`korllama baseline --out FOLDER`.")
        folder.require_data_only()
        return cls(root, allow_unrecorded)

    @property
    def root(self) -> Path:
        return self.dir.root

    @property
    def name(self) -> str:
        return self.record.get("system") or self.dir.root.name

    @property
    def fields(self) -> list[str]:
        """What the trees read: every column and derived feature of the spec."""
        return known_fields(self.spec)

    @property
    def trained_on(self) -> dict | None:
        """The table the trees were fitted from (korllama.run.data_fingerprint), for `--held-out`."""
        return self.record.get("data")

    @property
    def summary(self) -> dict:
        """What `korllama baseline` recorded: the settings kept, the rounds, the rows, the CPU time (trees.json)."""
        return self.record

    @property
    def fit_cost(self) -> tuple[float | None, float | None]:
        """(wall seconds, CPU seconds) of the fit, as trees.json recorded them: an evaluation of the trees carries
        them, as the baseline's own evaluation does, so a report can show what the trees cost to train."""
        return self.record.get("fit_seconds"), self.record.get("fit_cpu_seconds")

    @property
    def provenance(self) -> dict:
        return {"model": "LightGBM", **{f"setting {k}": v for k, v in (self.record.get("settings") or {}).items()}}

    def example_rows(self, n: int) -> Table | None:
        """The first `n` rows of the table the trees were fitted from, when its file is readable here."""
        source = (self.trained_on or {}).get("source")
        if n <= 0 or not source or not Path(source).is_file():
            return None
        try:
            return next(TableChunks(source, self.spec, chunk_rows=n).chunks())[1]
        except (KorllamaError, OSError, StopIteration):
            return None

    # -- the model --
    @cached_property
    def model(self):
        self.dir.verify_weights(allow_unrecorded=self.allow_unrecorded)
        return load_trees(self.dir.model)

    def predict_proba(self, table: Table, batch_size: int | None = None, progress=None, known=None) -> np.ndarray:
        """P(label) per row of `table`, columns in the spec's label order. (`batch_size` and `known` are the LLM's:
        the trees score a table in one call.)"""
        proba = self.model.predict_proba(table) if len(table) else np.zeros((0, len(self.classes)))
        if progress is not None:
            progress(len(table))
        return proba

    def split(self, table: Table | None = None) -> Split:
        """The fitting, validation and test rows of `table`, as `korllama baseline` split its --train (the trees fit
        on the training rows and report on the test rows, as a run does)."""
        if table is None:
            raise KorllamaError("The trees' table is not kept in their folder: pass the table (--data).")
        how = self.record.get("split") or {}
        if how.get("eval"):
            raise KorllamaError(f"The trees in {self.root} were fitted on all of their --train and scored on "
                                f"{how['eval']}: they have no held-out split; score other rows without --held-out.")
        return split(table, how.get("valid_fraction", 0.2), how.get("seed", 0), how.get("test_fraction", 0.0))

    # -- the decision rule and the references --
    @cached_property
    def stored_rule(self) -> DecisionRule | None:
        return DecisionRule.load(self.dir.decision) if self.dir.decision.is_file() else None

    def rule(self, decision: str = "argmax") -> DecisionRule | None:
        if decision_choice(decision) is Decision.ARGMAX:
            return None
        if self.stored_rule is None:
            raise KorllamaError(f"{self.root} has no decision rule ({self.dir.decision.name}); use --decision argmax, "
                                "or fit the trees again.")
        return self.stored_rule

    @cached_property
    def references(self) -> dict:
        if not self.dir.references.is_file():
            raise KorllamaError(f"{self.root} has no {self.dir.references.name} (the neutral value of each field, "
                                "which explain needs); fit the trees again with `korllama baseline`.")
        return load_references(self.dir.references)
