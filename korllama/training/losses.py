"""The answer's loss: next-token cross-entropy over the last columns of a left-padded batch, optionally weighted
per label (each label's first token by its softened inverse frequency)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from korllama.errors import ConfigError
from korllama.scoring import label_tokens


def loss_window(labels: torch.Tensor) -> int:
    """How many of the batch's last columns the loss needs logits for: from the column before the first labelled
    one (its logits predict that label) to the end. With left padding that is the longest answer + EOS, plus one."""
    labelled = (labels != -100).any(dim=0).nonzero()
    if not len(labelled):
        return 1
    return labels.shape[1] - int(labelled[0, 0]) + 1


def shifted_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of `logits` (batch, columns, vocab) against `labels` of the same columns: column t's
    logits predict label t + 1. Summed and divided by `num_items_in_batch` (the labelled tokens of the whole
    accumulated batch, as the Trainer counts them) when given, else by this batch's labelled tokens."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           weight=None if weight is None else weight.to(logits.device), ignore_index=-100,
                           reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != -100).sum().clamp(min=1)
    return loss / num_items_in_batch


def answer_loss(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """The default loss: token cross-entropy where labels are set (answer + EOS)."""
    return shifted_loss(outputs.logits, labels, num_items_in_batch)


def class_weighted_loss(vocab_weights: torch.Tensor):
    """Token cross-entropy where each label's first token's loss is scaled by its class weight (others: 1)."""
    def loss_fn(outputs, labels, num_items_in_batch=None):
        return shifted_loss(outputs.logits, labels, num_items_in_batch, weight=vocab_weights)
    return loss_fn


def class_weights(tokenizer, train_labels, classes: list[str]) -> torch.Tensor:
    """Softened inverse class frequency on each label's first token (they must differ to be told apart)."""
    first = label_tokens(tokenizer, classes).first_ids
    if len(set(first)) != len(first):
        raise ConfigError("train.class_weights weights each label's first token, but some labels start with the "
                          "same token for this tokenizer; set train.class_weights=false.")
    counts = train_labels.value_counts().reindex(classes, fill_value=0).clip(lower=1)
    weights = torch.ones(len(tokenizer))
    weights[first] = torch.tensor((counts.sum() / (len(classes) * counts)).to_numpy(dtype=np.float32)) ** 0.5
    return weights
