"""`Run`: a run read once — its config, spec, template, labels, split, evaluation sample, decision rule, references,
model and tokenizer — which every consumer (predict, evaluate, explain, serve, export, the card) takes. A run
folder's layout (what each file is) belongs to korllama.layout.RunDir.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from korllama.choices import Decision, Mode
from korllama.config import RunConfig, load_config
from korllama.data import Split, Table, read_table, split
from korllama.data.stream import TableChunks
from korllama.decision import DecisionRule, decision_choice
from korllama.defaults import BATCH_SIZE
from korllama.errors import KorllamaError
from korllama.io import sha256_file
from korllama.layout import RunDir
from korllama.model import load_run_weights
from korllama.prompts import Template, carried_fields, get_template
from korllama.references import load_references, reference_values
from korllama.scoring import encode_distinct, prompt_limit, refuse_long_prompts, score, too_long
from korllama.spec import TableSpec, load_spec
from korllama.synth import synthetic_table

# --- what a run was trained on -------------------------------------------------------------------------------------

def load_training_table(config: RunConfig, spec: TableSpec | None = None) -> Table:
    """The configured table, or the synthetic loan table when `data.train` is empty; read with `spec` (default:
    the configured one)."""
    spec = spec if spec is not None else load_spec(config.data.spec)
    if config.data.train is not None:
        return read_table(config.data.train, spec)
    return synthetic_table(config.data.synth_rows, config.data.synth_seed, spec)


def data_fingerprint(config: RunConfig, table: Table) -> dict:
    """What the run was trained on, so that `evaluate --held-out` can tell the same file from another one."""
    found = {"source": str(config.data.train) if config.data.train else "synthetic", "rows": len(table)}
    if config.data.train is not None and Path(config.data.train).is_file():
        found["sha256"] = sha256_file(Path(config.data.train))
    return found


# --- a run, read once ----------------------------------------------------------------------------------------------

class Run:
    """A trained run (or a bare base model scored with the default config, `base`), read once.

    Everything derived from the config is computed here and nowhere else: the spec, the prompt template, the labels,
    the split of the training table, the evaluation sample training chose its best weights on, the decision rule,
    the neutral references of explain; the model and tokenizer are loaded on first use (safetensors only)."""

    def __init__(self, config: RunConfig, root: str | Path | None = None, base: str | None = None,
                 table: Table | None = None, allow_unrecorded: bool = False):
        self.config = config
        self.allow_unrecorded = allow_unrecorded  # load weights without a checksum record (with a warning)
        self.dir = RunDir(root) if root is not None else None
        self.base = base
        own = self.dir is not None and self.dir.spec.is_file()  # the run's own copy: never a file of this folder
        # where the spec is read from, as an evaluation records it (the run's copy: readable from any folder)
        self.spec_source: str = str(self.dir.spec.resolve() if own else config.data.spec)
        if table is not None:
            self.spec: TableSpec = table.spec
        else:
            self.spec = load_spec(self.dir.spec if own else config.data.spec)
        self.template: Template = get_template(self.spec, config.prompt.template, config.prompt.fields)
        self.classes: list[str] = list(self.spec.label.classes)
        self._table = table

    @classmethod
    def load(cls, root: str | Path | None = None, base: str | None = None, table: Table | None = None,
             way_out: str | None = None, allow_unfinished: bool = False, allow_unrecorded: bool = False) -> Run:
        """A run directory's run; with `base` its prompts on another model (its untrained base); with `base` alone
        a bare base model under the default config. `table`: the run's training table, when the caller holds it.
        `way_out` ends the sentence refusing a folder that is not a run. A run whose training did not finish is
        refused (its own weights, that is without `base`) unless `allow_unfinished`; one without a record of its
        weights' checksums unless `allow_unrecorded`. A run that carries code (a .py, an auto_map) is refused."""
        if root is None and base is None:
            raise KorllamaError("Name a run directory, or a base model with --base.")
        if root is None:
            config = RunConfig()
            return cls(config.model_copy(update={"model": config.model.model_copy(update={"base": base})}), None, base)
        folder = RunDir(root)
        folder.require_run(*([way_out] if way_out else []))
        folder.require_data_only()
        if base is None and not allow_unfinished:
            folder.require_finished()
        return cls(load_config(folder.config, saved=True), folder.root, base, table, allow_unrecorded)

    kind = Mode.SCORE  # an LLM graded by rank scoring or its classification head (korllama.system.System)

    @property
    def classifier(self) -> bool:
        """The run grades with a classification head (model.head: classifier): no answer to generate."""
        return self.config.model.head == "classifier"

    @property
    def root(self) -> Path | None:
        return self.dir.root if self.dir is not None else None

    @property
    def fields(self) -> list[str]:
        """The columns and derived features the prompt shows: what the model reads."""
        return carried_fields(self.template, self.spec)

    @cached_property
    def summary(self) -> dict:
        """RUN/train_summary.json ({} for an unfinished run or a bare base)."""
        return self.dir.read_summary() if self.dir is not None and self.dir.finished else {}

    @property
    def trained_on(self) -> dict | None:
        """The table the run was trained on (`data_fingerprint`), None for a run that does not record it."""
        return self.summary.get("data")

    @property
    def provenance(self) -> dict:
        """Where the base model came from (a named base's package, file and checksum), as training recorded it."""
        return self.summary.get("base") or {}

    def example_rows(self, n: int) -> Table | None:
        """The first `n` rows of the run's training table (its file, read only that far; or its synthetic table),
        clean; None when there is none to read here (the file has moved, or a spec has no synthetic table)."""
        data = self.config.data
        if n <= 0:
            return None
        try:
            if data.train is not None:
                return next(TableChunks(data.train, self.spec, chunk_rows=n).chunks())[1]
            table = synthetic_table(data.synth_rows, data.synth_seed, self.spec)
            return table.subset(table.frame.index[:n])
        except (KorllamaError, OSError, StopIteration, KeyError, ValueError):
            return None

    @property
    def tuned(self) -> bool:
        """The run's own weights are scored (not a bare or untuned base)."""
        return self.dir is not None and self.base is None

    @property
    def name(self) -> str:
        """The system's name in reports: a base model scored with a run's prompts does not take the run's name."""
        if self.dir is None:
            return Path(str(self.base)).name
        if self.base is not None:
            return f"{Path(str(self.base)).name} ({self.dir.root.name} prompts)"
        return self.dir.root.name

    # -- data --
    def training_table(self) -> Table:
        """The table the run was trained on (read once)."""
        if self._table is None:
            self._table = load_training_table(self.config, self.spec)
        return self._table

    def split(self, table: Table | None = None) -> Split:
        """The training, validation and test rows of `table` (default: the run's own table), as training split
        them."""
        data = self.config.data
        return split(table if table is not None else self.training_table(), data.valid_fraction, data.split_seed,
                     data.test_fraction)

    def eval_sample(self, valid: Table) -> Table:
        """The validation rows training scores at each evaluation (and the card reports): one definition."""
        return valid.sample(self.config.train.eval_rows, seed=self.config.data.split_seed)

    # -- the model --
    @cached_property
    def _model_and_tokenizer(self):
        return load_run_weights(self.config, self.dir, self.base, self.allow_unrecorded, labels=self.classes)

    @property
    def model(self):
        return self._model_and_tokenizer[0]

    @property
    def tokenizer(self):
        return self._model_and_tokenizer[1]

    @property
    def max_tokens(self) -> int:
        """The longest prompt scored: a longer one is refused by every command and the service."""
        return prompt_limit(self.model, self.config.train.max_length)

    def encode(self, table: Table) -> tuple[np.ndarray, list[list[int]]]:
        """(each row's index into the distinct prompts, the distinct prompts' token ids): each distinct text is
        tokenised once (the loan prompts repeat: 1,324 distinct in test.csv's 64,197 rows). A prompt longer than
        the model reads is refused, naming its row."""
        codes, distinct = encode_distinct(self.tokenizer, self.template.render(table) if len(table) else [])
        if too_long(distinct, self.max_tokens) is not None:  # which row: only then are the rows' prompts spelled out
            refuse_long_prompts([distinct[c] for c in codes], self.max_tokens, table)
        return codes, distinct

    def predict_proba(self, table: Table, batch_size: int = BATCH_SIZE, progress=None, known: dict | None = None
                      ) -> np.ndarray:
        """P(label) per row of `table` by rank scoring (or the run's classification head, model.head), each distinct
        prompt scored once (`known`: prompts scored
        by an earlier call, kept across a file's chunks). `progress(n)` is told rows done."""
        if not len(table):
            return np.zeros((0, len(self.classes)))
        codes, distinct = self.encode(table)
        return self.score_encoded(distinct, batch_size, progress, known,
                                  copies=np.bincount(codes, minlength=len(distinct)))[codes]

    def score_encoded(self, encoded: list[list[int]], batch_size: int = BATCH_SIZE, progress=None,
                      known: dict | None = None, copies: np.ndarray | None = None) -> np.ndarray:
        """P(label) of prompts already tokenised (`encode`, the service's length check): rank scoring of the labels'
        tokens, or the run's classification head (model.head), whichever the run's weights are."""
        return score(self.model, self.tokenizer, None, self.classes, batch_size, progress=progress, encoded=encoded,
                     known=known, copies=copies)

    # -- the decision rule and the references --
    @cached_property
    def stored_rule(self) -> DecisionRule | None:
        """The run's macro-F1 decision rule (RUN/decision.json), fitted on its eval rows; None when it has none or
        another model is scored."""
        if not self.tuned or not self.dir.decision.is_file():
            return None
        return DecisionRule.load(self.dir.decision)

    def rule(self, decision: str = "argmax") -> DecisionRule | None:
        """None for plain argmax; for "macro-f1" the run's rule, which weighs the rare labels up so that macro-F1
        is higher than argmax's."""
        if decision_choice(decision) is Decision.ARGMAX:
            return None
        if not self.tuned:
            raise KorllamaError("--decision macro-f1 uses the rule fitted when a run was trained: name the run, "
                                "without --base.")
        if self.stored_rule is None:
            raise KorllamaError(f"{self.root} has no decision rule ({self.dir.decision.name}; runs trained before it "
                                "existed have none): use --decision argmax, or train the run again.")
        return self.stored_rule

    @cached_property
    def references(self) -> dict:
        """The neutral value of every field: stored in the run (RUN/references.json) when its card was written,
        else derived from its training split."""
        if self.dir is not None and self.dir.references.is_file():
            return load_references(self.dir.references)
        try:
            train_part = self.split().train
        except KorllamaError as exc:
            raise KorllamaError(f"The run's training data cannot be read, so the neutral references cannot be "
                                f"derived from it: {exc}") from None
        return reference_values(train_part)
