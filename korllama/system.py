"""A grading system, whatever it is: an LLM run (korllama.run.Run) or a tree baseline (korllama.trees.Trees). Every
consumer — predict, evaluate, explain, serve, compare — takes one through this interface, and `load_system` reads
either kind from its folder, so a user grades, serves and explains with whichever system the report says wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from korllama.choices import Mode
from korllama.data import Split, Table
from korllama.decision import DecisionRule
from korllama.defaults import BATCH_SIZE
from korllama.errors import KorllamaError
from korllama.layout import TreesDir
from korllama.run import Run
from korllama.spec import TableSpec
from korllama.trees import Trees


class System(Protocol):
    """What every consumer needs of a system."""

    kind: Mode  # Mode.SCORE for an LLM run, Mode.TREES for the trees
    spec: TableSpec
    classes: list[str]
    spec_source: str  # where the spec is read from, as an evaluation records it
    base: str | None  # a bare base model scored instead of a run's weights (LLM only)

    @property
    def name(self) -> str: ...

    @property
    def root(self) -> Path | None: ...

    @property
    def fields(self) -> list[str]: ...  # the columns and derived features it reads

    @property
    def references(self) -> dict: ...  # the neutral value of every field (explain)

    @property
    def stored_rule(self) -> DecisionRule | None: ...

    def predict_proba(self, table: Table, batch_size: int = BATCH_SIZE, progress=None, known=None) -> np.ndarray: ...

    def rule(self, decision: str = "argmax") -> DecisionRule | None: ...

    def split(self, table: Table | None = None) -> Split: ...


def is_trees(folder: str | Path | None) -> bool:
    """`folder` is a tree baseline's (light: no model is read)."""
    return folder is not None and TreesDir(folder).is_trees


def load_system(root: str | Path | None = None, base: str | None = None, way_out: str | None = None,
                allow_unfinished: bool = False, allow_unrecorded: bool = False) -> Run | Trees:
    """The system in `root`: a tree baseline's folder, or a run (with `base`, its prompts on another model; `base`
    alone, a bare base model) as korllama.run.Run.load reads it."""
    if is_trees(root):
        if base is not None:
            raise KorllamaError(f"{root} holds trees, which have no base model: leave out --base.")
        return Trees.load(root, allow_unrecorded=allow_unrecorded)
    return Run.load(root, base, way_out=way_out, allow_unfinished=allow_unfinished,
                    allow_unrecorded=allow_unrecorded)
