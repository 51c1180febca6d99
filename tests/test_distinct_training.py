"""train.distinct_prompts: rows with the same prompt and label are one example weighted by their count; its loss is
the full table's (same rows, same weights) up to float rounding, in a fraction of the sequences."""

from __future__ import annotations

import pytest
import torch
from fixtures import CLASSES, FIELDS, TINY, run_config

from korllama.config import ModelConfig, RunConfig, TinyModelConfig
from korllama.model import build_tiny, load_base
from korllama.prompts import render
from korllama.scoring import label_tokens
from korllama.synth import synthetic_table
from korllama.training import train
from korllama.training.collate import collator, distinct_examples, tokenize
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
