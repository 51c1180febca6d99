"""Predict labels with a tuned run: load it (`load_run`), grade a file (`predict_file`, rank scoring from
korllama.scoring), or generate the original project's way (`generate`: its sampling settings and its parser).
"""

from __future__ import annotations

from pathlib import Path

import torch

from korllama.errors import KorllamaError
from korllama.run import RunDir
from korllama.scoring import encode_prompts, left_padded_batches, pad_id_of, predict_labels, score

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
    run = RunDir(run)
    run.require_run()
    config = load_config(run.config)
    for folder in (run.model, run.adapter):  # weights from safetensors only: a pickle can run code
        if folder.is_dir() and not any(folder.glob("*.safetensors")):
            raise KorllamaError(f"{folder} holds no safetensors weights; korllama loads safetensors only "
                                "(never pickled .bin files).")
    run_tokenizer = run.tokenizer if run.tokenizer.is_dir() else None
    if base is not None:  # the run's prompt settings with another model (its untrained base): its own tokenizer
        model, tokenizer = load_base(config.model, base, for_training=False)
    elif (run.model / "config.json").is_file():
        model, tokenizer = load_base(config.model, run.model, for_training=False, tokenizer_source=run_tokenizer)
    elif (run.adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = run.base if config.model.base == "tiny" else config.model.base
        model, tokenizer = load_base(config.model, base_path, for_training=False, tokenizer_source=run_tokenizer)
        model = PeftModel.from_pretrained(model, run.adapter)  # safetensors adapter
        model.eval()
    else:
        raise KorllamaError(f"{run} holds neither model/ nor adapter/: its training did not finish; "
                            f"resume it with `korllama train --out {run} --resume`.")
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
    pad_id = pad_id_of(tokenizer)
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
