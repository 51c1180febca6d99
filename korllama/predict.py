"""Predict grades with a causal LM.

Rank scoring (the default): one forward pass per batch; P(grade) is the softmax over the logits of the label
tokens (" A" .. " G") at the answer position, so every prediction is a valid grade. Rows are sorted by length
and left-padded, with explicit position ids, so padding never changes a row's result and only the last
position's logits are computed (`logits_to_keep=1`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from korllama.errors import KorllamaError
from korllama.prompts import answer


def label_token_ids(tokenizer, classes: list[str]) -> list[int]:
    """The single token id of each answer (" A" ...); a label that is several tokens cannot be rank-scored."""
    ids = []
    for label in classes:
        tokens = tokenizer(answer(label), add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tokens)
            raise KorllamaError(f"Label {label!r} is {len(tokens)} tokens ({pieces}) after the answer prefix for this "
                                "tokenizer; rank scoring needs one token per label (use shorter label names).")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise KorllamaError(f"Labels {classes} do not map to distinct tokens for this tokenizer.")
    return ids


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


def left_padded_batches(encoded: list[list[int]], batch_size: int, pad_id: int):
    """(row indices, input ids, attention mask) batches of similar-length rows, padded on the left so that every
    row's last token sits in the last column (where the answer's logits, or generation, start)."""
    order = np.argsort([len(e) for e in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[j, width - len(encoded[i]):] = 1
        yield rows, ids, mask


@torch.inference_mode()
def score(model, tokenizer, prompts: list[str] | None, classes: list[str], batch_size: int = 32,
          progress=None, encoded: list[list[int]] | None = None) -> np.ndarray:
    """(rows, classes) probabilities of each label as the prompt's answer. `progress(n)` is told rows done.
    A caller that already tokenised the prompts (`encode_prompts`) passes `encoded` instead of `prompts`."""
    label_ids = torch.tensor(label_token_ids(tokenizer, classes))
    encoded = encode_prompts(tokenizer, prompts) if encoded is None else encoded
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros((len(encoded), len(classes)), dtype=np.float64)
    for rows, ids, mask in left_padded_batches(encoded, batch_size, pad_id):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 whatever the padding
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=1, use_cache=False).logits[:, -1, :]
        out[rows] = torch.softmax(logits[:, label_ids.to(device)].float(), dim=-1).cpu().numpy()
        if progress is not None:
            progress(len(rows))
    if was_training:
        model.train()
    return out


def predict_labels(proba: np.ndarray, classes: list[str]) -> np.ndarray:
    return np.asarray(classes, dtype=object)[proba.argmax(axis=1)]


# --- loading what to predict with ------------------------------------------------------------------------------

def load_run(run: str | Path | None = None, base: str | None = None):
    """(model, tokenizer, config) for a tuned run directory, or for a bare base model (`base`, "before tuning").

    A run holds model/ (full training: a complete save_pretrained folder) or adapter/ (LoRA: loaded on top of
    the run's base model with PeftModel.from_pretrained). A bare base uses the default RunConfig.
    """
    from korllama.config import RunConfig, load_config
    from korllama.model import load_base

    if run is None and base is None:
        raise KorllamaError("Name a run directory, or a base model with --base.")
    if run is None:
        config = RunConfig()
        config = config.model_copy(update={"model": config.model.model_copy(update={"base": base})})
        model, tokenizer = load_base(config.model, base, for_training=False)
        return model, tokenizer, config
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise KorllamaError(f"{run} is not a korllama run directory (no config.yaml); train one with "
                            "`korllama train`, or pass a base model with --base.")
    config = load_config(run / "config.yaml")
    for folder in (run / "model", run / "adapter"):  # weights from safetensors only: a pickle can run code
        if folder.is_dir() and not any(folder.glob("*.safetensors")):
            raise KorllamaError(f"{folder} holds no safetensors weights; korllama loads safetensors only "
                                "(never pickled .bin files).")
    run_tokenizer = run / "tokenizer" if (run / "tokenizer").is_dir() else None
    if base is not None:  # the run's prompt settings with another model (its untrained base): its own tokenizer
        model, tokenizer = load_base(config.model, base, for_training=False)
    elif (run / "model" / "config.json").is_file():
        model, tokenizer = load_base(config.model, run / "model", for_training=False, tokenizer_source=run_tokenizer)
    elif (run / "adapter" / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = run / "base" if config.model.base == "tiny" else config.model.base
        model, tokenizer = load_base(config.model, base_path, for_training=False, tokenizer_source=run_tokenizer)
        model = PeftModel.from_pretrained(model, run / "adapter")  # safetensors adapter
        model.eval()
    else:
        raise KorllamaError(f"{run} holds neither model/ nor adapter/: its training did not finish; "
                            f"resume it with `korllama train --config {run / 'config.yaml'} --out {run} --resume`.")
    return model, tokenizer, config


# --- generation, the original's way ------------------------------------------------------------------------------

def seed_generation_config(tokenizer):
    """The original project's GenerationConfig, verbatim (pad = eos)."""
    from transformers import GenerationConfig

    return GenerationConfig(pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                            do_sample=True, top_k=1, top_p=0.9, num_return_sequences=1,
                            repetition_penalty=1.1, max_new_tokens=100, temperature=0.8)


def parse_grade(text: str, classes: list[str]) -> str | None:
    """The first grade after "Credit Rating :" (or at the very start), else the first standalone grade; None if none."""
    import re

    alternatives = "|".join(re.escape(c) for c in sorted(classes, key=len, reverse=True))
    for pattern in (rf"^\s*({alternatives})(?![\w+-])", rf"Credit Rating\s*:\s*({alternatives})(?![\w+-])",
                    rf"(?<![\w+-])({alternatives})(?![\w+-])"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], classes: list[str], batch_size: int = 8, seed: int = 0,
             progress=None) -> tuple[list[str | None], list[str]]:
    """(parsed grade or None, generated text) per prompt, with the original's sampling settings."""
    torch.manual_seed(seed)
    config = seed_generation_config(tokenizer)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = encode_prompts(tokenizer, prompts)
    texts: list[str] = [""] * len(prompts)
    model.eval()
    for rows, ids, mask in left_padded_batches(encoded, batch_size, pad_id):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for j, i in enumerate(rows):  # generation continues from the last column
            texts[i] = tokenizer.decode(out[j, ids.shape[1]:], skip_special_tokens=True)
        if progress is not None:
            progress(len(rows))
    return [parse_grade(t, classes) for t in texts], texts


def predict_file(run: str | Path | None, data: str | Path, out: str | Path, with_proba: bool = False,
                 base: str | None = None, batch_size: int = 32, console=None) -> dict:
    """Grade every row of a table and write the competition's format: `ID,<label header>` in input order."""
    import pandas as pd

    from korllama.data import read_table
    from korllama.io import write_csv
    from korllama.prompts import get_template
    from korllama.ui import progress_bar

    model, tokenizer, config = load_run(run, base)
    table = read_table(data, config.data.spec)
    spec = table.spec
    prompts = get_template(spec, config.prompt.template, config.prompt.fields).render(table)
    with progress_bar(len(prompts), "grading", console) as advance:
        proba = score(model, tokenizer, prompts, spec.label.classes, batch_size, progress=advance)
    frame = pd.DataFrame({spec.id.name: table.ids.to_numpy(),
                          spec.label.name: predict_labels(proba, spec.label.classes)})
    if with_proba:
        for i, c in enumerate(spec.label.classes):
            frame[f"P_{c}"] = proba[:, i].round(6)
    write_csv(out, frame, encoding="utf-8")
    counts = frame[spec.label.name].value_counts().reindex(spec.label.classes, fill_value=0)
    return {"rows": len(frame), "out": str(out), "counts": {k: int(v) for k, v in counts.items()}}
