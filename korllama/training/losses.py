"""The answer's loss: next-token cross-entropy over the last columns of a left-padded batch, optionally weighted
per label (each label's first token by its softened inverse frequency) and per example (the rows a distinct
(prompt, label) example stands for, train.distinct_prompts)."""

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
                 weight: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of `logits` (batch, columns, vocab) against `labels` of the same columns: column t's
    logits predict label t + 1. Summed and divided by `num_items_in_batch` (the labelled tokens of the whole
    accumulated batch, as the Trainer counts them) when given, else by this batch's labelled tokens. `rows`: how many
    table rows each example stands for (batch,): its tokens' losses, and its labelled tokens, count that often, so
    a distinct example weighted by its count is its rows' loss."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                             weight=None if weight is None else weight.to(logits.device), ignore_index=-100,
                             reduction="none").view(targets.shape)
    counts = (targets != -100).to(losses.dtype)
    if rows is not None:
        losses, counts = losses * rows.to(losses)[:, None], counts * rows.to(losses)[:, None]
    if num_items_in_batch is None:
        num_items_in_batch = counts.sum().clamp(min=1)
    return losses.sum() / num_items_in_batch


def weighted_items(batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled tokens, labelled tokens times the rows each example stands for) of a step's batches, counted as
    the Trainer counts num_items_in_batch (labels shifted by one)."""
    plain = sum(b["labels"][..., 1:].ne(-100).sum() for b in batches)
    weighted = sum((b["labels"][..., 1:].ne(-100) * b["weight"][:, None]).sum() for b in batches)
    return plain, weighted


def answer_loss(outputs, labels, num_items_in_batch=None, rows=None) -> torch.Tensor:
    """The default loss: token cross-entropy where labels are set (answer + EOS)."""
    return shifted_loss(outputs.logits, labels, num_items_in_batch, rows=rows)


def class_weighted_loss(vocab_weights: torch.Tensor):
    """Token cross-entropy where each label's first token's loss is scaled by its class weight (others: 1)."""
    def loss_fn(outputs, labels, num_items_in_batch=None, rows=None):
        return shifted_loss(outputs.logits, labels, num_items_in_batch, weight=vocab_weights, rows=rows)
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


def head_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
              rows: torch.Tensor | None = None) -> torch.Tensor:
    """A classification head's loss: cross-entropy of its logits (batch, labels) against the label indices, each
    example counted as often as the rows it stands for (`rows`, train.distinct_prompts) and each label weighted by
    `weight` (head_class_weights): the (weighted) mean over the batch's rows."""
    losses = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="none",
                             weight=None if weight is None else weight.to(logits.device))
    count = torch.ones_like(losses) if weight is None else weight.to(logits.device)[targets.to(logits.device)]
    if rows is not None:
        losses, count = losses * rows.to(losses), count * rows.to(losses)
    return losses.sum() / count.sum().clamp(min=1e-12)


def head_class_weights(train_labels, classes: list[str]) -> torch.Tensor:
    """The same softened inverse class frequency as `class_weights`, one per label of the head."""
    counts = train_labels.value_counts().reindex(classes, fill_value=0).clip(lower=1)
    return torch.tensor((counts.sum() / (len(classes) * counts)).to_numpy(dtype=np.float32)) ** 0.5
