"""Predict grades with a causal LM.

Rank scoring (the default): one forward pass per batch; P(grade) is the softmax over the logits of the label
tokens (" A" .. " G") at the answer position, so every prediction is a valid grade. Rows are sorted by length
and left-padded, with explicit position ids, so padding never changes a row's result and only the last
position's logits are computed (`logits_to_keep=1`).
"""

from __future__ import annotations

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


@torch.inference_mode()
def score(model, tokenizer, prompts: list[str], classes: list[str], batch_size: int = 32,
          progress=None) -> np.ndarray:
    """(rows, classes) probabilities of each label as the prompt's answer. `progress(n)` is told rows done."""
    label_ids = torch.tensor(label_token_ids(tokenizer, classes))
    encoded = encode_prompts(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros((len(prompts), len(classes)), dtype=np.float64)
    order = np.argsort([len(e) for e in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):  # left padding: every row's last token sits in the last column
            ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[j, width - len(encoded[i]):] = 1
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
