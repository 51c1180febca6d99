"""Training rows: a prompt + its answer tokenised with the loss on the answer only, and batches padded on the left
(so every row's answer ends in the batch's last columns, where the loss needs logits). With train.distinct_prompts,
rows with the same prompt and label are one example weighted by their count (distinct_examples)."""

from __future__ import annotations

import pandas as pd
import torch

from korllama.errors import ConfigError
from korllama.prompts import answer
from korllama.scoring import pad_id_of, pad_left


def distinct_examples(prompts: list[str], labels: list[str]) -> tuple[list[str], list[str], list[int]]:
    """(prompts, labels, counts): each distinct (prompt, label) pair once, in first-seen order, with how many rows
    it stands for. The loss of a pair weighted by its count is the loss of its rows (the same tokens, the same
    logits), so the weighted loss over the pairs is the full table's: the loan table's 61,628 training rows are a
    few thousand pairs (1,303 distinct prompts, each seen with one or a few grades)."""
    frame = pd.DataFrame({"prompt": prompts, "label": labels})
    counted = frame.groupby(["prompt", "label"], sort=False).size()
    return ([p for p, _ in counted.index], [y for _, y in counted.index], counted.astype(int).tolist())


def tokenize(tokenizer, prompts: list[str], labels: list[str], max_length: int,
             weights: list[int] | None = None) -> dict[str, list]:
    """input_ids = <s> prompt + answer + EOS; labels = -100 on the prompt, so only the answer's tokens (all of
    them, for a label of several tokens) and EOS carry loss. The collator pads and builds the attention mask.
    `weights`: how many rows each example stands for (distinct_examples), kept as the column `weight`."""
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer([answer(y) for y in labels], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    input_ids, label_ids = [], []
    for p, a in zip(prompt_ids, answer_ids):
        input_ids.append(p + a + eos)
        label_ids.append([-100] * len(p) + a + eos)
    longest = max(len(x) for x in input_ids)
    if longest > max_length:
        raise ConfigError(f"The longest prompt is {longest} tokens, over train.max_length={max_length}; raise it "
                          "or choose a shorter template (prompt.template=compact).")
    out = {"input_ids": input_ids, "labels": label_ids}
    if weights is not None:
        out["weight"] = [float(w) for w in weights]
    return out


def tokenize_head(tokenizer, prompts: list[str], labels: list[str], classes: list[str], max_length: int,
                  weights: list[int] | None = None) -> dict[str, list]:
    """For a classification head (model.head: classifier): input_ids = <s> prompt, no answer; `classes` = the
    label's index among the spec's labels (named so, not `labels`: the Trainer counts a `labels` column as
    next-token targets). `weights` as in `tokenize`."""
    input_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    longest = max(len(x) for x in input_ids)
    if longest > max_length:
        raise ConfigError(f"The longest prompt is {longest} tokens, over train.max_length={max_length}; raise it "
                          "or choose a shorter template (prompt.template=compact).")
    index = {c: i for i, c in enumerate(classes)}
    out = {"input_ids": input_ids, "classes": [index[y] for y in labels]}
    if weights is not None:
        out["weight"] = [float(w) for w in weights]
    return out


def collator(tokenizer, merge_repeats: bool = False) -> LeftPaddedCollator:
    """Dynamic padding to the longest row of the batch, on the LEFT, with explicit position ids (see
    LeftPaddedCollator): every row's answer ends in the last column, so the loss needs logits there only.
    `merge_repeats`: a batch's identical rows run as one weighted row (merge_repeats)."""
    return LeftPaddedCollator(pad_id_of(tokenizer), merge_repeats)


def merge_repeats(features: list[dict]) -> list[dict]:
    """A batch's identical rows (the same prompt and answer tokens) as one row, its `weight` the rows it stands for
    (their weights summed, 1 each without one), in first-seen order. Rows with the same tokens have the same logits,
    so weighted by their count they give the batch the same loss and gradient (losses.shifted_loss, head_loss: each
    token's loss and count times the weight) in fewer sequences. Exact without dropout only: the rows would have
    drawn their own dropout masks (recipe.has_dropout). On the loan table a batch of 64 random rows holds about
    42 distinct ones (1,500 distinct (prompt, label) pairs in 61,628 rows)."""
    merged: dict[tuple, dict] = {}
    for f in features:
        key = (tuple(f["input_ids"]), tuple(f["labels"]) if "labels" in f else f["classes"])
        weight = float(f.get("weight", 1.0))
        if key in merged:
            merged[key]["weight"] += weight
        else:
            merged[key] = {**f, "weight": weight}
    return list(merged.values())


class LeftPaddedCollator:
    """Pad a batch of tokenised rows (`tokenize`) on the left to its longest row: input_ids (pad id), labels (-100),
    attention_mask and position_ids = attention_mask.cumsum(-1) - 1, clamped at 0 — real tokens count from 0 whatever
    the padding, exactly as korllama.scoring scores, so training and scoring see the same positions.

    Left padding puts every row's answer + EOS in the batch's last columns, so GradeTrainer.compute_loss asks the
    model for logits there only (`logits_to_keep`): the lm_head (49,152 wide for SmolLM2) and the cross-entropy run
    over a few columns instead of every prompt position, with the same loss.

    Padding-free batches (rows packed into one, positions restarting per row) are also correct on CPU in
    transformers 5.24 with use_cache=False (its SDPA mask separates the rows by their position ids), but slower here:
    the rows are short and of nearly one length, so the dense block-diagonal mask of a packed row costs more than
    the few pad tokens it saves (benchmarks/cpu_lora.py measures both)."""

    def __init__(self, pad_id: int, merge_repeats: bool = False):
        self.pad_id, self.merge = pad_id, merge_repeats

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.merge:  # identical rows as one weighted row: the same loss (merge_repeats)
            features = merge_repeats(features)
        ids, mask = pad_left([f["input_ids"] for f in features], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        if "classes" in features[0]:  # a classification head's targets: one label index per row (tokenize_head)
            batch["classes"] = torch.tensor([f["classes"] for f in features], dtype=torch.long)
        else:
            batch["labels"] = pad_left([f["labels"] for f in features], -100)[0]
        if "weight" in features[0]:  # rows each example stands for (train.distinct_prompts)
            batch["weight"] = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
        return batch
