"""The original project's way of answering: sample up to 100 new tokens with its settings, then parse a grade out of
the text (`parse_grade`); `off_format_rate` says how often the answer is more than a label. `korllama evaluate
--mode generate` and the demo use it beside rank scoring (korllama.scoring), which needs no parser.
"""

from __future__ import annotations

import re

import torch
from transformers import GenerationConfig

from korllama.scoring import encode_prompts, left_padded_batches, pad_id_of


def seed_generation_config(tokenizer):
    """The original project's GenerationConfig, verbatim (pad = eos)."""
    return GenerationConfig(pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                            do_sample=True, top_k=1, top_p=0.9, num_return_sequences=1,
                            repetition_penalty=1.1, max_new_tokens=100, temperature=0.8)


def parse_grade(text: str, classes: list[str]) -> str | None:
    """The label the text answers: one at the very start, else the first right after a colon (the original's
    "###Credit Rating : C", or any "grade: ..."), else the first standing alone; None if none. Labels are the spec's
    (any script: Korean labels too); the longest wins where two start at the same place ("A+" over "A")."""
    alternatives = "|".join(re.escape(c) for c in sorted(classes, key=len, reverse=True))
    for pattern in (rf"^\s*({alternatives})(?![\w+-])", rf"[:：]\s*({alternatives})(?![\w+-])",
                    rf"(?<![\w+-])({alternatives})(?![\w+-])"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


def off_format_rate(texts: list[str], classes: list[str]) -> float:
    """Share of generated answers that are not just a label (surrounding white space aside): the original's "CCC+",
    or a right grade followed by invented "### ..." sections, which its parser may still read as a grade."""
    return sum(text.strip() not in classes for text in texts) / max(len(texts), 1)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str] | None, classes: list[str], batch_size: int = 8, seed: int = 0,
             progress=None, encoded: list[list[int]] | None = None) -> tuple[list[str | None], list[str]]:
    """(parsed grade or None, generated text) per prompt, with the original's sampling settings. A caller that
    already tokenised the prompts (`encode_prompts`) passes `encoded` instead of `prompts`, as for `score`."""
    torch.manual_seed(seed)
    config = seed_generation_config(tokenizer)
    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    encoded = encode_prompts(tokenizer, prompts) if encoded is None else encoded
    texts: list[str] = [""] * len(encoded)
    model.eval()
    for rows, ids, mask in left_padded_batches(encoded, batch_size, pad_id):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for j, i in enumerate(rows):  # generation continues from the last column
            texts[i] = tokenizer.decode(out[j, ids.shape[1]:], skip_special_tokens=True)
        if progress is not None:
            progress(len(rows))
    return [parse_grade(t, classes) for t in texts], texts
