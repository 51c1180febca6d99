"""train.distinct_prompts: rows with the same prompt and label are one example weighted by their count; its loss is
the full table's (same rows, same weights) up to float rounding, in a fraction of the sequences."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import CLASSES, FIELDS, TINY, run_config
from safetensors.torch import load_file

from korllama.config import ModelConfig, RunConfig, TinyModelConfig
from korllama.model import build_tiny, load_base
from korllama.prompts import render
from korllama.scoring import label_tokens
from korllama.synth import synthetic_table
from korllama.training import train
from korllama.training.collate import collator, distinct_examples, merge_repeats, tokenize
from korllama.training.losses import class_weighted_loss
from korllama.training.trainer import GradeTrainer

REPEATING = ["term", "payments_made"]  # few fields: many rows share a prompt (and a grade)


@pytest.fixture(scope="module")
def table():
    return synthetic_table(240, seed=3)


@pytest.fixture(scope="module")
def tiny(table, tmp_path_factory):
    base = build_tiny(render(table, "compact", FIELDS), tmp_path_factory.mktemp("base"), TinyModelConfig(**TINY),
                      seed=0, labels=CLASSES)
    model, tokenizer = load_base(ModelConfig(device="cpu"), str(base), for_training=True)
    model.eval()  # no dropout: the same numbers both ways
    return model, tokenizer


def batches(tokenizer, encoded: dict, size: int) -> list[dict]:
    rows = [{k: encoded[k][i] for k in encoded} for i in range(len(encoded["input_ids"]))]
    return [collator(tokenizer)(rows[i:i + size]) for i in range(0, len(rows), size)]


def trainer_for(model, tokenizer, tmp_path, compute_loss_func=None) -> GradeTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True)
    return GradeTrainer(model=model, args=args, processing_class=tokenizer, compute_loss_func=compute_loss_func,
                        classes=CLASSES, eval_batch_size=8)


def test_distinct_examples_count_each_prompt_and_label_once(table):
    prompts, labels = render(table, "compact", REPEATING), table.labels.tolist()
    kept, grades, counts = distinct_examples(prompts, labels)
    assert sum(counts) == len(prompts) and len(kept) < len(prompts) / 3
    assert len(set(zip(kept, grades))) == len(kept)  # each pair once
    pairs = list(zip(prompts, labels))
    assert all(pairs.count(pair) == n for pair, n in zip(zip(kept, grades), counts))
    assert len(set(kept)) < len(kept)  # some prompt is seen with two grades: two examples, as two rows would be


@pytest.mark.parametrize("class_weights", [False, True], ids=["plain", "class-weighted"])
def test_the_weighted_distinct_loss_is_the_full_tables(tiny, table, tmp_path, class_weights):
    """The loss of a step over every row (as the Trainer normalises it: summed, divided by the labelled tokens it
    counts) equals the loss over the distinct examples weighted by their rows, batches and accumulation included."""
    model, tokenizer = tiny
    prompts, labels = render(table, "compact", REPEATING), table.labels.tolist()
    weights = torch.ones(len(tokenizer))
    weights[label_tokens(tokenizer, CLASSES).first_ids[CLASSES.index("B")]] = 3.0
    trainer = trainer_for(model, tokenizer, tmp_path, class_weighted_loss(weights) if class_weights else None)
    full = batches(tokenizer, tokenize(tokenizer, prompts, labels, 256), 64)
    kept, grades, counts = distinct_examples(prompts, labels)
    distinct = batches(tokenizer, tokenize(tokenizer, kept, grades, 256, weights=counts), 16)
    assert len(kept) < len(prompts) / 3 and "weight" in distinct[0]

    def step_loss(step: list[dict]) -> float:  # one optimizer step over gradient-accumulated batches
        got, items = trainer.get_batch_samples(iter(step), len(step), torch.device("cpu"))
        assert items is not None
        with torch.no_grad():
            return sum(float(trainer.compute_loss(model, dict(b), num_items_in_batch=items)) for b in got)

    whole, weighted = step_loss(full), step_loss(distinct)
    assert abs(whole - weighted) <= 1e-5 * abs(whole), (whole, weighted)
    with torch.no_grad():  # a batch alone (no count from the Trainer) is its own rows' per-token mean too
        alone = float(trainer.compute_loss(model, dict(distinct[0])))
        rows = [i for i, (p, y) in enumerate(zip(prompts, labels)) if (p, y) in set(zip(kept[:16], grades[:16]))]
        its_rows = batches(tokenizer, tokenize(tokenizer, [prompts[i] for i in rows], [labels[i] for i in rows],
                                               256), len(rows))[0]
        assert abs(alone - float(trainer.compute_loss(model, dict(its_rows)))) <= 1e-5 * alone
    unweighted = step_loss([{k: v for k, v in b.items() if k != "weight"} for b in distinct])
    assert abs(unweighted - whole) > 1e-3  # the weights matter: the test would catch their loss


def test_training_on_distinct_prompts(tmp_path):
    config = run_config(prompt={"template": "compact", "fields": REPEATING},
                        train={"distinct_prompts": True, "max_steps": 4, "eval_steps": 4, "save_steps": 4})
    summary = train(RunConfig.model_validate(config), tmp_path / "run")
    assert summary["global_step"] == 4 and summary["train_examples"] < summary["train_rows"] / 2
    assert summary["best_eval_macro_f1"] >= 0


def test_merge_repeats_keeps_each_distinct_row_once_with_its_count(tiny, table):
    model, tokenizer = tiny
    prompts, labels = render(table, "compact", REPEATING), table.labels.tolist()
    encoded = tokenize(tokenizer, prompts[:64], labels[:64], 256)
    rows = [{k: encoded[k][i] for k in encoded} for i in range(64)]
    merged = merge_repeats(rows)
    keys = [(tuple(r["input_ids"]), tuple(r["labels"])) for r in merged]
    assert len(set(keys)) == len(merged) < 40  # many repeats in 64 rows of two fields
    assert sum(r["weight"] for r in merged) == 64
    assert all(r["weight"] == sum(1 for x in rows if (tuple(x["input_ids"]), tuple(x["labels"])) == key)
               for r, key in zip(merged, keys))
    weighted = merge_repeats([{**r, "weight": 2.0} for r in rows])  # distinct examples' weights add up
    assert [r["weight"] for r in weighted] == [2 * r["weight"] for r in merged]


def _loss_and_gradient(trainer, model, step: list[dict]) -> tuple[float, torch.Tensor]:
    """One optimizer step's loss and gradient over its accumulated batches, as the Trainer computes them."""
    model.zero_grad()
    got, items = trainer.get_batch_samples(iter(step), len(step), torch.device("cpu"))
    loss = 0.0
    for batch in got:
        part = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
        part.backward()
        loss += float(part.detach())
    gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    return loss, gradient


@pytest.mark.parametrize("class_weights", [False, True], ids=["plain", "class-weighted"])
def test_a_merged_batch_gives_the_plain_batchs_loss_and_gradient(tiny, table, tmp_path, class_weights):
    """The same rows batched plain and with their repeats merged: the same loss and gradient up to float
    rounding, with gradient accumulation over two batches."""
    model, tokenizer = tiny
    prompts, labels = render(table, "compact", REPEATING), table.labels.tolist()
    weights = torch.ones(len(tokenizer))
    weights[label_tokens(tokenizer, CLASSES).first_ids[CLASSES.index("B")]] = 3.0
    trainer = trainer_for(model, tokenizer, tmp_path, class_weighted_loss(weights) if class_weights else None)
    encoded = tokenize(tokenizer, prompts[:128], labels[:128], 256)
    rows = [{k: encoded[k][i] for k in encoded} for i in range(128)]
    plain = [collator(tokenizer)(rows[:64]), collator(tokenizer)(rows[64:])]
    merged = [collator(tokenizer, merge_repeats=True)(rows[:64]), collator(tokenizer, merge_repeats=True)(rows[64:])]
    assert len(merged[0]["input_ids"]) < 40 and merged[0]["input_ids"].shape[1] == plain[0]["input_ids"].shape[1]
    loss, gradient = _loss_and_gradient(trainer, model, plain)
    merged_loss, merged_gradient = _loss_and_gradient(trainer, model, merged)
    assert abs(loss - merged_loss) <= 1e-6 * abs(loss), (loss, merged_loss)
    assert float((gradient - merged_gradient).abs().max()) <= 1e-6 * float(gradient.abs().max())
    dropped = [{k: v for k, v in b.items() if k != "weight"} for b in merged]  # the counts matter: without them
    assert abs(_loss_and_gradient(trainer, model, dropped)[0] - loss) > 1e-3


def test_training_with_merged_repeats_follows_the_plain_curve(tmp_path):
    """Two short trainings on the same rows, merged and plain: the same losses and evaluations, weights equal up to
    float rounding; the plain run is what a model with dropout gets."""
    def run(merge: bool, name: str) -> tuple[list, dict]:
        config = run_config(prompt={"template": "compact", "fields": REPEATING},
                            train={"merge_repeats": merge, "batch_size": 64, "max_steps": 6, "eval_steps": 3,
                                   "save_steps": 6})
        summary = train(RunConfig.model_validate(config), tmp_path / name)
        assert summary["merged_repeats"] is merge  # the run says whether its batches were merged
        state = json.loads((tmp_path / name / "trainer_state.json").read_text())
        weights = load_file(str(tmp_path / name / "model" / "model.safetensors"))
        return state["log_history"], weights, state["total_flos"]  # total_flos: 6 x parameters x tokens run

    plain_log, plain, plain_flos = run(False, "plain")
    merged_log, merged, merged_flos = run(True, "merged")
    assert merged_flos < 0.8 * plain_flos  # fewer sequences ran
    assert len(plain_log) == len(merged_log)
    for a, b in zip(plain_log, merged_log):
        for key in ("loss", "eval_macro_f1", "eval_accuracy"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert max(float((plain[k] - merged[k]).abs().max()) for k in plain) <= 1e-4


def test_models_with_dropout_are_not_merged(tiny):
    """Rows under dropout draw their own masks: merging them would change the gradient's distribution."""
    import copy

    from korllama.config import LoraSettings
    from korllama.model import wrap_lora
    from korllama.training.recipe import has_dropout

    model, _ = tiny
    assert not has_dropout(model)
    assert has_dropout(wrap_lora(copy.deepcopy(model), LoraSettings(r=2, alpha=4, dropout=0.1)))
    assert not has_dropout(wrap_lora(copy.deepcopy(model), LoraSettings(r=2, alpha=4, dropout=0.0)))
