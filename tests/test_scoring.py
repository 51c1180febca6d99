"""Tests for korllama.scoring: rank scoring (batching and padding never change a row's result), label tokens,
single-token fast path and multi-token labels (equal to a brute-force reference).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import CLASSES, FIELDS

from korllama.errors import KorllamaError
from korllama.prompts import render
from korllama.run import Run
from korllama.scoring import label_tokens, predict_labels, score
from korllama.synth import synthetic_table


@pytest.fixture(scope="module")
def loaded(run_dir):
    run = Run.load(run_dir)
    return run.model, run.tokenizer, run.config


@pytest.fixture(scope="module")
def mixed_prompts() -> list[str]:
    """40 prompts of very different lengths: short (3 fields), long (all fields) and truncated ones."""
    table = synthetic_table(40, seed=7)
    short, long = render(table, "compact", FIELDS), render(table, "compact")
    prompts = []
    for i in range(40):
        if i % 3 == 0:
            prompts.append(long[i])
        elif i % 3 == 1:
            prompts.append(short[i])
        else:
            prompts.append(long[i][: 20 + 7 * i])
    return prompts


# --- rank scoring ------------------------------------------------------------------------------------------------

def test_batching_and_padding_do_not_change_the_scores(loaded, mixed_prompts):
    model, tokenizer, _ = loaded
    lengths = [len(x) for x in tokenizer(mixed_prompts)["input_ids"]]
    assert len(set(lengths)) >= 15 and max(lengths) - min(lengths) > 200  # real padding in every batch

    one = score(model, tokenizer, mixed_prompts, CLASSES, batch_size=1)
    many = score(model, tokenizer, mixed_prompts, CLASSES, batch_size=32)
    some = score(model, tokenizer, mixed_prompts, CLASSES, batch_size=7)
    assert one.shape == many.shape == (40, 7)
    assert np.isfinite(many).all()
    assert np.abs(one - many).max() < 1e-4
    assert np.abs(one - some).max() < 1e-4
    np.testing.assert_allclose(many.sum(axis=1), 1.0, atol=1e-6)
    assert (many >= 0).all()
    # the rows are not all alike: a model that ignored its input would pass the checks above trivially
    assert np.abs(many - many.mean(axis=0)).max() > 1e-4
    labels = predict_labels(many, CLASSES)
    assert len(labels) == 40 and set(labels) <= set(CLASSES)
    assert list(labels) == [CLASSES[i] for i in many.argmax(axis=1)]


def test_score_matches_a_plain_unpadded_forward_pass(loaded, mixed_prompts):
    model, tokenizer, _ = loaded
    label_ids = label_tokens(tokenizer, CLASSES).first_ids
    batched = score(model, tokenizer, mixed_prompts, CLASSES, batch_size=32)
    shortest = int(np.argmin([len(x) for x in tokenizer(mixed_prompts)["input_ids"]]))  # the most padded row
    for i in (shortest, 0):
        ids = tokenizer(mixed_prompts[i], return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits[0, -1]
        expected = torch.softmax(logits[label_ids].double(), dim=-1).numpy()
        alone = score(model, tokenizer, [mixed_prompts[i]], CLASSES)[0]
        assert np.abs(alone - expected).max() < 1e-5
        assert np.abs(batched[i] - expected).max() < 1e-4


def test_score_reports_progress_and_restores_training_mode(loaded, mixed_prompts):
    model, tokenizer, _ = loaded
    done = []
    model.train()
    try:
        score(model, tokenizer, mixed_prompts[:10], CLASSES, batch_size=4, progress=done.append)
        assert model.training
    finally:
        model.eval()
    assert done == [4, 4, 2]


def test_label_tokens_of_the_loan_grades_are_single_and_distinct(loaded):
    _, tokenizer, _ = loaded
    labels = label_tokens(tokenizer, CLASSES)
    assert labels.single and len(set(labels.first_ids)) == 7
    assert [tokenizer.decode(a) for a in labels.answers] == [f" {c}" for c in CLASSES]
    longer = label_tokens(tokenizer, ["A", "AAA-long"])
    assert not longer.single and len(longer.answers[1]) > 1
    assert longer.completions[1][-1] == tokenizer.eos_token_id


class CaseBlindTokenizer:
    """A tokenizer that lowercases (some real ones do): 'A' and 'a' become the same tokens."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text.lower()]}


def test_labels_that_are_the_same_tokens_are_refused():
    with pytest.raises(KorllamaError, match="'A' and 'a' are the same tokens"):
        label_tokens(CaseBlindTokenizer(), ["A", "B", "a"])
    assert not label_tokens(CaseBlindTokenizer(), ["A", "B"]).single  # " a" is two characters here




# --- labels of several tokens ------------------------------------------------------------------------------------

MULTI = ["우수", "보통", "미흡", "pass", "pass with merit"]  # Korean (bytes the tiny BPE never merged) and a prefix


def brute_force(model, tokenizer, prompt: str, classes: list[str]) -> np.ndarray:
    """Reference: one full, unpadded forward pass per label continuation; sum of log P(answer tokens + EOS)."""
    from korllama.prompts import answer

    prompt_ids = tokenizer(prompt)["input_ids"]
    totals = []
    for label in classes:
        completion = tokenizer(answer(label), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + completion])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(completion))
        totals.append(sum(float(logp[p, t]) for p, t in zip(positions, completion)))
    return torch.softmax(torch.tensor(totals), dim=0).numpy()


def test_multi_token_scoring_equals_a_brute_force_reference(loaded, mixed_prompts):
    model, tokenizer, _ = loaded
    labels = label_tokens(tokenizer, MULTI)
    assert not labels.single and max(len(a) for a in labels.answers) >= 3
    prompts = mixed_prompts[:9]
    batched = score(model, tokenizer, prompts, MULTI, batch_size=4)
    assert batched.shape == (9, 5)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-9)
    for i, prompt in enumerate(prompts):
        np.testing.assert_allclose(batched[i], brute_force(model, tokenizer, prompt, MULTI), atol=1e-5)
    for size in (1, 3, 9):  # batch size (and so padding) does not change it
        np.testing.assert_allclose(score(model, tokenizer, prompts, MULTI, batch_size=size), batched, atol=1e-5)
    assert np.abs(batched - batched.mean(axis=0)).max() > 1e-6  # rows differ: the prompt is read


def test_eos_keeps_a_prefix_label_from_winning_for_free(loaded, mixed_prompts):
    """Without EOS, P("pass with merit") <= P("pass") always (it extends it); with EOS either may win."""
    model, tokenizer, _ = loaded
    proba = score(model, tokenizer, mixed_prompts[:6], ["pass", "pass with merit"])
    reference = np.stack([brute_force(model, tokenizer, p, ["pass", "pass with merit"]) for p in mixed_prompts[:6]])
    np.testing.assert_allclose(proba, reference, atol=1e-5)


def test_each_distinct_prompt_is_scored_once_with_the_plain_paths_probabilities(loaded, monkeypatch):
    """Loan prompts repeat: scoring each distinct prompt once gives every row the plain path's probabilities (up to
    float rounding: another batch) and labels, in a fraction of the forward passes."""
    import korllama.scoring as scoring

    model, tokenizer, _ = loaded
    table = synthetic_table(300, seed=11)
    prompts = render(table, "compact", ["term", "payments_made"])  # few fields: many rows share a prompt
    distinct = len(set(prompts))
    assert distinct < len(prompts) / 5
    forwarded = []
    batch = scoring._score_batch
    monkeypatch.setattr(scoring, "_score_batch", lambda m, lab, ids, *rest: forwarded.append(len(ids)) or
                        batch(m, lab, ids, *rest))
    done = []
    once = score(model, tokenizer, prompts, CLASSES, batch_size=32, progress=done.append)
    assert sum(forwarded) == distinct and sum(done) == len(prompts)
    forwarded.clear()
    plain = score(model, tokenizer, prompts, CLASSES, batch_size=32, once=False)
    assert sum(forwarded) == len(prompts)
    assert np.abs(once - plain).max() <= 1e-6
    assert list(predict_labels(once, CLASSES)) == list(predict_labels(plain, CLASSES))
    assert np.abs(once - once.mean(axis=0)).max() > 1e-4  # the rows differ: a constant answer would pass trivially


def test_prompts_known_from_earlier_chunks_are_not_scored_again(loaded, monkeypatch):
    """predict and evaluate grade a file in chunks and pass one `known` memory: a prompt of an earlier chunk is not
    forwarded again, and its rows get the probabilities it had."""
    import korllama.scoring as scoring

    model, tokenizer, _ = loaded
    prompts = render(synthetic_table(200, seed=12), "compact", ["term", "payments_made"])
    first, second = prompts[:100], prompts[100:]
    forwarded = []
    batch = scoring._score_batch
    monkeypatch.setattr(scoring, "_score_batch", lambda m, lab, ids, *rest: forwarded.append(len(ids)) or
                        batch(m, lab, ids, *rest))
    known: dict = {}
    a = score(model, tokenizer, first, CLASSES, known=known)
    b = score(model, tokenizer, second, CLASSES, known=known)
    assert sum(forwarded) == len(set(prompts)) < len(set(first)) + len(set(second))
    whole = score(model, tokenizer, prompts, CLASSES, once=False)
    assert np.abs(np.vstack([a, b]) - whole).max() <= 1e-6


# --- the shared prefix -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [CLASSES, MULTI], ids=["one-token", "multi-token"])
def test_the_shared_prefix_gives_the_plain_paths_probabilities(loaded, classes, monkeypatch):
    """A long instruction every prompt starts with is run once and its KV cache reused by every row's suffix (padded
    after it): the probabilities are the plain path's up to float rounding and the labels the same, for one-token
    labels (the fast path) and labels of several tokens (the continuation pass extends the prefix's cache). The
    instruction is a full compact prompt (~300 tiny-model tokens: the seed template's would pass its 512 positions)."""
    import korllama.scoring as scoring

    model, tokenizer, _ = loaded
    table = synthetic_table(24, seed=5)
    prompts = [render(table, "compact")[0] + "\n" + p for p in render(table, "compact", FIELDS)]
    encoded = scoring.encode_prompts(tokenizer, prompts)
    shared = scoring.common_prefix(encoded)
    assert shared >= scoring.PREFIX_MIN  # the automatic choice uses it
    assert len({len(e) for e in encoded}) >= 3  # the suffixes are padded: the pad columns sit after the prefix
    used = []
    batch = scoring._score_batch
    monkeypatch.setattr(scoring, "_score_batch", lambda m, lab, ids, mask, prefix: used.append(prefix) or
                        batch(m, lab, ids, mask, prefix))
    plain = score(model, tokenizer, prompts, classes, batch_size=8, shared_prefix=False)
    assert used and all(p is None for p in used)
    used.clear()
    cached = score(model, tokenizer, prompts, classes, batch_size=8)
    assert used and all(p is not None and p.length == shared for p in used)
    assert np.abs(cached - plain).max() <= 1e-6
    assert np.abs(np.log(cached) - np.log(plain)).max() <= 1e-4  # the small probabilities too
    assert list(predict_labels(cached, classes)) == list(predict_labels(plain, classes))
    assert np.abs(np.log(plain) - np.log(plain).mean(axis=0)).max() > 1e-3  # the rows differ: the suffix is read
    some = score(model, tokenizer, prompts[:3], classes, batch_size=2, shared_prefix=True)  # odd-sized batches
    assert np.abs(some - plain[:3]).max() <= 1e-6


def test_a_short_common_prefix_is_not_run_apart(loaded):
    """Compact prompts share a few tokens only: the automatic choice runs them whole (one pass a batch)."""
    import korllama.scoring as scoring

    _, tokenizer, _ = loaded
    encoded = scoring.encode_prompts(tokenizer, render(synthetic_table(50, seed=6), "compact"))
    assert scoring.common_prefix(encoded) < scoring.PREFIX_MIN
    assert scoring.common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # each keeps its last token
    assert scoring.common_prefix([[1, 2, 3], [1, 5]]) == 1 and scoring.common_prefix([]) == 0
