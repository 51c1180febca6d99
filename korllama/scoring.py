"""Rank scoring: P(label | prompt) for every label of a spec, in batched forward passes. The one scoring path of
training's evaluation, predict, evaluate, serve and explain.

Each label's completion is `answer(label)` (" A", " 우수", " pass with merit"). Two cases:

- **Every label is one token** (" A".." G" for Llama-style tokenizers): one forward pass per batch; P(label) is
  the softmax over the labels' logits at the answer position (`logits_to_keep=1`). The fast path.
- **Some label is several tokens** (Korean labels, phrases): each label is scored by the summed log-probability
  of its whole completion, its tokens plus EOS (so a label that is a prefix of another, " A" vs " A+", is not
  favoured), then normalised over the label set (TabLLM's verbalizer scoring). The prompt is run once with its
  KV cache; the cache is repeated once per label and every label continuation is scored in one more pass.

Each distinct prompt is scored once and its probabilities given to every row that has it (exact up to float
rounding: tests/test_scoring.py compares it with scoring every row). Rows are sorted by length and left-padded with
explicit position ids, so padding never changes a row's result.

**Shared prefix**: the prompts of a template start with the same instruction text. When the token prefix common to
every prompt of a call is at least PREFIX_MIN tokens, it is run once (one row, with its KV cache) and each batch
runs only its rows' suffixes: the cache is repeated once per row, the suffixes are left-padded *after* the prefix
(pad columns masked), and their position ids continue from the prefix's length. Causal attention makes the prefix's
keys and values the same whatever follows, so this is exact up to float rounding (tests/test_scoring.py compares
it with the plain path, one-token and multi-token labels).
Prompts and answers are tokenised separately, exactly as training joins them (korllama.training.collate.tokenize).

A model with a classification head (model.head: classifier, a transformers *ForSequenceClassification, LoRA-wrapped or
not) is scored by the same `score`, in the same left-padded batches and with the same shared prefix: its probabilities
are the softmax of the head's logits, one per label, which transformers reads at the rightmost token that is not the
pad token. Left padding puts every row's last token in the last column, so that is the prompt's own last token and
a batch gives each row what the row alone gives (tests/test_head.py); a prompt ending in the pad token is refused.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from korllama.defaults import BATCH_SIZE
from korllama.errors import DataError, KorllamaError, quote
from korllama.prompts import answer


def unwrapped(model):
    """The transformers model under a peft wrapper (its LoRA layers in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_classifier(model) -> bool:
    """The model grades with a classification head (its logits are one per label), not with its LM head."""
    return type(unwrapped(model)).__name__.endswith("ForSequenceClassification")


@dataclass(frozen=True)
class LabelTokens:
    """The token ids each label is scored (and trained) on."""

    classes: list[str]
    answers: list[list[int]]  # answer(label) tokens, without EOS
    eos: int

    @property
    def single(self) -> bool:
        """Every label is one token: the one-pass fast path applies."""
        return all(len(a) == 1 for a in self.answers)

    @property
    def first_ids(self) -> list[int]:
        return [a[0] for a in self.answers]

    @property
    def completions(self) -> list[list[int]]:
        """What multi-token scoring sums over: the answer's tokens and EOS."""
        return [[*a, self.eos] for a in self.answers]


def label_tokens(tokenizer, classes: list[str]) -> LabelTokens:
    """Tokenise every label's answer; labels that come out as the same tokens cannot be told apart."""
    answers = [tokenizer(answer(c), add_special_tokens=False)["input_ids"] for c in classes]
    seen: dict[tuple, str] = {}
    for c, ids in zip(classes, answers):
        if not ids:
            raise KorllamaError(f"Label {c!r} is no token at all for this tokenizer; give the labels visible names.")
        twin = seen.setdefault(tuple(ids), c)
        if twin != c:
            raise KorllamaError(f"Labels {twin!r} and {c!r} are the same tokens for this tokenizer; they cannot be "
                                "told apart. Rename one of them in the spec.")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise KorllamaError("The tokenizer has no EOS token; a label's completion ends with one.")
    return LabelTokens(list(classes), answers, eos)


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


def encode_distinct(tokenizer, prompts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    """(each prompt's index among the distinct texts, the distinct texts' token ids): equal texts are equal tokens,
    so each distinct text is tokenised once."""
    if not prompts:
        return np.zeros(0, dtype=np.int64), []
    codes, texts = pd.factorize(pd.Series(prompts, dtype=object))
    return codes, encode_prompts(tokenizer, list(texts))


def prompt_limit(model, max_length: int) -> int:
    """The most tokens a prompt may have: train.max_length, and never more positions than the model has."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(max_length, positions or max_length)


def too_long(encoded: list[list[int]], limit: int) -> tuple[int, int] | None:
    """(row, tokens) of the first prompt longer than `limit`, or None."""
    return next(((i, len(ids)) for i, ids in enumerate(encoded) if len(ids) > limit), None)


def too_long_sentence(where: str, tokens: int, limit: int) -> str:
    """One wording for every command and the service: a row whose prompt the model cannot read is refused."""
    return f"{where}: its prompt is {tokens:,} tokens, more than this run's limit of {limit:,} (are the numbers real?)"


def refuse_long_prompts(encoded: list[list[int]], limit: int, table) -> None:
    """A DataError naming the first row of `table` (a korllama.data.Table) whose prompt is over `limit` tokens:
    predict, evaluate and explain refuse it as the service does (a 422), rather than score a prompt the model was
    never trained to read."""
    found = too_long(encoded, limit)
    if found is not None:
        row, tokens = found
        raise DataError(too_long_sentence(f"{table.source}, ID {quote(table.ids.iloc[row])}", tokens, limit) + ".",
                        row=row)


def pad_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def pad_left(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded, attention mask): `rows` padded with `value` on the LEFT to the longest, so that every row's last
    token sits in the last column (where the answer's logits, or generation, start). Training's collator pads the
    same way, so training and scoring see the same positions."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, width - len(r):] = torch.as_tensor(r, dtype=torch.long)
        mask[j, width - len(r):] = 1
    return ids, mask


def left_padded_batches(encoded: list[list[int]], batch_size: int, pad_id: int):
    """(row indices, input ids, attention mask) batches of similar-length rows, padded on the left (pad_left)."""
    order = np.argsort([len(e) for e in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad_left([encoded[i] for i in rows], pad_id)
        yield rows, ids, mask


# The shortest common prefix worth its own pass. The seed template's is 39 SmolLM2 tokens (of ~265); compact's is 3-5,
# a saving below the cost of one more forward pass and a cache copy a batch (benchmarks/shared_prefix.py, RESULTS
# section 22).
PREFIX_MIN = 16


def common_prefix(encoded: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least its last token (whose logits score it)."""
    if not encoded:
        return 0
    shared = len(os.path.commonprefix(encoded))  # compares the lexicographic min and max: any sequences
    return min(shared, min(len(e) for e in encoded) - 1)


@dataclass
class SharedPrefix:
    """The tokens every prompt of a call starts with, run once: its KV cache (one row) and its length."""

    length: int
    cache: object  # a transformers Cache (DynamicCache)

    @classmethod
    def encode(cls, model, ids: list[int], device) -> SharedPrefix:
        tokens = torch.tensor([ids], dtype=torch.long, device=device)
        keep = {} if is_classifier(model) else {"logits_to_keep": 1}  # a head's logits are a few per token anyway
        out = model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=True, **keep)
        return cls(len(ids), out.cache)

    def for_rows(self, rows: int):
        """A copy of the cache, repeated once per row (the forward pass appends the suffixes' keys to it)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


KNOWN_LIMIT = 200_000  # prompts remembered across a file's chunks (about 100 MB of token ids and probabilities)


def distinct_rows(encoded: list[list[int]]) -> tuple[list[list[int]], np.ndarray]:
    """(the distinct token sequences in first-seen order, each row's index among them)."""
    index: dict[tuple[int, ...], int] = {}
    where = np.fromiter((index.setdefault(tuple(ids), len(index)) for ids in encoded), dtype=np.int64,
                        count=len(encoded))
    distinct = [list(ids) for ids in index]
    return distinct, where


@torch.inference_mode()
def score(model, tokenizer, prompts: list[str] | None, classes: list[str], batch_size: int = BATCH_SIZE,
          progress=None, encoded: list[list[int]] | None = None, once: bool = True,
          known: dict | None = None, copies: np.ndarray | None = None,
          shared_prefix: bool | None = None) -> np.ndarray:
    """(rows, classes) probabilities of each label as the prompt's answer, each distinct prompt scored once.
    `progress(n)` is told rows done. A caller that already tokenised the prompts (`encode_prompts`) passes
    `encoded` instead of `prompts`. `once=False` scores every row (the plain path the tests compare with).
    `known`: probabilities of prompts scored before (token ids -> row), read and filled here: a file graded in
    chunks scores a prompt its earlier chunks had once (up to KNOWN_LIMIT prompts, then it starts again).
    `copies`: how many rows each of `encoded` stands for (the progress bar counts rows), when a caller deduplicated.
    `shared_prefix`: run the prompts' common token prefix once (see the module's docstring); None: when it is at
    least PREFIX_MIN tokens and there are two prompts or more to score, True: whenever there is one, False: never.
    A model with a classification head gives its head's probabilities instead (see the module's docstring)."""
    labels = HeadLabels(classes, model) if is_classifier(model) else \
        label_tokens(tokenizer, classes)
    if encoded is None and once and prompts:  # equal texts are equal tokens: tokenise each distinct text once
        codes, distinct = encode_distinct(tokenizer, prompts)
        return score(model, tokenizer, None, classes, batch_size, progress, distinct, once, known,
                     copies=np.bincount(codes, minlength=len(distinct)), shared_prefix=shared_prefix)[codes]
    encoded = encode_prompts(tokenizer, prompts) if encoded is None else encoded
    # Each distinct prompt once: a rendered prompt is deterministic text, so equal token ids give equal
    # probabilities (up to the float rounding of another batch), and the loan table's prompts repeat (1,303
    # distinct in 61,628 training rows). `copies[i]` counts the rows of distinct prompt i, for the progress bar.
    distinct, where = distinct_rows(encoded) if once else (encoded, np.arange(len(encoded)))
    weight = np.ones(len(encoded), dtype=np.int64) if copies is None else copies  # rows behind each encoded row
    copies = np.bincount(where, weights=weight, minlength=len(distinct)).astype(np.int64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros((len(distinct), len(classes)), dtype=np.float64)
    todo = np.arange(len(distinct))
    if known is not None and once:
        seen = np.array([tuple(ids) in known for ids in distinct], dtype=bool)
        for i in np.flatnonzero(seen):
            out[i] = known[tuple(distinct[i])]
        if progress is not None and seen.any():
            progress(int(copies[seen].sum()))
        todo = np.flatnonzero(~seen)
    pending = [distinct[i] for i in todo]
    try:
        prefix = None
        shared = common_prefix(pending) if shared_prefix is not False else 0
        if shared >= (1 if shared_prefix else PREFIX_MIN) and (shared_prefix or len(pending) > 1):
            prefix = SharedPrefix.encode(model, pending[0][:shared], device)
            pending = [ids[shared:] for ids in pending]
        for rows, ids, mask in left_padded_batches(pending, batch_size, pad_id_of(tokenizer)):
            rows = todo[rows]
            out[rows] = _score_batch(model, labels, ids.to(device), mask.to(device), prefix).cpu().numpy()
            if progress is not None:
                progress(int(copies[rows].sum()))
    finally:
        if was_training:
            model.train()
    if known is not None and once:
        if len(known) + len(todo) > KNOWN_LIMIT:
            known.clear()
        known.update((tuple(distinct[i]), out[i].copy()) for i in todo)
    out = out[where]
    broken = int((~np.isfinite(out).all(axis=1)).sum())
    if broken:  # NaN grades as the first label under argmax: never let such a probability out
        raise KorllamaError(f"The model's probabilities are not finite (NaN or infinity) for {broken:,} of "
                            f"{len(out):,} rows: its weights are damaged or overflowed, so nothing is graded with "
                            "them.")
    return out


def _score_batch(model, labels: LabelTokens, ids: torch.Tensor, mask: torch.Tensor,
                 prefix: SharedPrefix | None = None) -> torch.Tensor:
    """Probabilities (batch, labels) for one left-padded batch; with `prefix`, the batch holds the suffixes that
    follow it: they attend to its cached tokens (mask columns of ones before theirs), positions counted after it."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 whatever the padding
    if isinstance(labels, HeadLabels):
        return _classify_batch(model, labels, ids, mask, positions, prefix)
    single = labels.single
    positions, mask, cache = _after_prefix(prefix, ids, mask, positions)
    result = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, cache=cache,
                   use_cache=cache is not None or not single)
    last = result.logits[:, -1, :].float()
    if single:
        return torch.softmax(last[:, labels.first_ids], dim=-1)
    return torch.softmax(_completion_logprobs(model, labels, last, result.cache, mask), dim=-1)


@dataclass(frozen=True)
class HeadLabels:
    """What a classification head is scored with: its labels, checked against its outputs."""

    classes: list[str]
    model: object

    def __post_init__(self):
        outputs = unwrapped(self.model).config.num_labels
        if outputs != len(self.classes):
            raise KorllamaError(f"The model's classification head has {outputs} outputs but the spec has "
                                f"{len(self.classes)} labels ({', '.join(self.classes)}): it was trained for "
                                "another spec.")


def _classify_batch(model, labels: HeadLabels, ids, mask, positions, prefix: SharedPrefix | None) -> torch.Tensor:
    """The head's probabilities (batch, labels) for one left-padded batch (a prefix's suffixes with `prefix`)."""
    pad = unwrapped(model).config.pad_token_id
    if pad is not None and bool((ids[:, -1] == pad).any()):
        # transformers reads the head at the rightmost token that is not the pad token: never the prompt's last one
        raise KorllamaError("A prompt ends with the tokenizer's padding token, so the classification head cannot "
                            "tell where it ends; change the template so that it ends with text.")
    positions, mask, cache = _after_prefix(prefix, ids, mask, positions)
    result = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=cache is not None)
    return torch.softmax(result.logits.float(), dim=-1)


def _after_prefix(prefix: SharedPrefix | None, ids, mask, positions):
    """(positions, mask, cache) of a batch of suffixes that follow `prefix`: positions counted after it, its columns
    attended to, its KV cache repeated per row; the batch as it is without one."""
    if prefix is None:
        return positions, mask, None
    ones = torch.ones((len(ids), prefix.length), dtype=mask.dtype, device=mask.device)
    return positions + prefix.length, torch.cat([ones, mask], dim=-1), prefix.for_rows(len(ids))


def _completion_logprobs(model, labels: LabelTokens, last: torch.Tensor, cache, mask: torch.Tensor) -> torch.Tensor:
    """Summed log P(label tokens + EOS | prompt), (batch, labels), from the prompt's last logits and its KV cache.

    The cache is repeated once per label (row-major: row 0's labels, then row 1's ...) and each label's tokens but
    the last are fed in one pass; their logits predict the next token of the same label. Shorter labels are padded
    at the end: causal attention keeps the padding from touching the real tokens, and its terms are left out."""
    device = last.device
    batch, n_labels = last.shape[0], len(labels.classes)
    completions = labels.completions
    width = max(len(c) for c in completions)
    table = torch.full((n_labels, width), labels.eos, dtype=torch.long, device=device)
    real = torch.zeros((n_labels, width), dtype=torch.bool, device=device)
    for k, c in enumerate(completions):
        table[k, :len(c)] = torch.tensor(c, device=device)
        real[k, :len(c)] = True
    logp_first = torch.log_softmax(last, dim=-1)[:, table[:, 0]]  # (batch, labels)
    if width == 1:
        return logp_first
    cache.batch_repeat_interleave(n_labels)
    feed = table[:, :-1].repeat(batch, 1)  # (batch * labels, width - 1)
    start = mask.sum(-1).repeat_interleave(n_labels)[:, None]  # the position after the prompt's last token
    positions = start + torch.arange(width - 1, device=device)[None, :]
    attention = torch.cat([mask.repeat_interleave(n_labels, dim=0), torch.ones_like(feed)], dim=-1)
    logits = model(input_ids=feed, attention_mask=attention, position_ids=positions, cache=cache,
                   use_cache=True).logits.float()
    targets = table[:, 1:].repeat(batch, 1)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    logp = (logp * real[:, 1:].repeat(batch, 1)).sum(-1).view(batch, n_labels)
    return logp_first + logp


def predict_labels(proba: np.ndarray, classes: list[str]) -> np.ndarray:
    return np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
