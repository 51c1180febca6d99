"""Tests for korllama.export: a LoRA run merged and a full-weight run saved as plain Hugging Face folders, loadable by
AutoModelForCausalLM.from_pretrained alone and scoring as the run does; refusals; nothing half-written.

The LoRA run is trained here (r=4, 6 steps) on a tiny random base built with korllama.model.build_tiny, as in
test_train; the full-weight run is conftest's shared `run_dir`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import CLASSES, FIELDS, TINY, run_config

from korllama.config import RunConfig, TinyModelConfig
from korllama.export import EXPORT_FILE, TOLERANCE, export_run
from korllama.model import build_tiny
from korllama.prompts import render
from korllama.run import Run
from korllama.scoring import score
from korllama.synth import synthetic_table
from korllama.training import train


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """Rows the runs never trained on (another seed), rendered as the runs render them."""
    return render(synthetic_table(40, seed=11), "compact", FIELDS)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """LoRA r=4 on a tiny random base (test_train's recipe)."""
    train_prompts = render(synthetic_table(200, seed=0), "compact", FIELDS)
    base = build_tiny(train_prompts, tmp_path_factory.mktemp("base"), TinyModelConfig(**TINY), seed=0,
                      labels=CLASSES)
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    config = run_config(model={"base": str(base)}, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                        train={"lr": 5e-2})
    train(RunConfig.model_validate(config), run_dir)
    return run_dir


def load_export(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def by_hand(folder: Path, prompts: list[str]) -> np.ndarray:
    """Score as the export's README tells another tool to: korllama.json, transformers and torch, nothing else."""
    model, tokenizer = load_export(folder)
    meta = json.loads((folder / EXPORT_FILE).read_text())
    first = [meta["label_token_ids"][c][0] for c in meta["labels"]]
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits[0, -1].float()
        rows.append(torch.softmax(logits[first], dim=-1).numpy())
    return np.array(rows)


def test_export_of_a_lora_run_merges_it_and_scores_as_the_run(cli, lora_run, prompts, tmp_path):
    out = tmp_path / "export"
    code, stdout, err = cli("export", lora_run, "--out", out)
    assert code == 0, err
    assert "lora merged" in " ".join(stdout.split())

    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", EXPORT_FILE,
            "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)  # safetensors only
    assert "adapter_config.json" not in files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    model, tokenizer = load_export(out)
    assert type(model).__name__ == "LlamaForCausalLM"  # a plain transformers model, no PEFT wrapper
    assert not [k for k in model.state_dict() if "lora" in k]

    _loaded = Run.load(lora_run)

    run_model, run_tokenizer, config = _loaded.model, _loaded.tokenizer, _loaded.config
    assert type(run_model).__name__.startswith("Peft")
    expected = score(run_model, run_tokenizer, prompts, CLASSES)
    exported = score(model, tokenizer, prompts, CLASSES)
    assert np.abs(exported - expected).max() <= TOLERANCE  # stated tolerance: 1e-5 for float32 weights
    np.testing.assert_allclose(by_hand(out, prompts), expected, atol=TOLERANCE, rtol=0)

    # the merge changed the base: the export is not the untuned model
    base, base_tokenizer = load_export(Path(config.model.base))
    assert np.abs(score(base, base_tokenizer, prompts, CLASSES) - expected).max() > 1e-3

    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["labels"] == CLASSES and meta["scoring"] == "single-token"
    assert meta["answers"]["B"] == " B"
    assert meta["label_token_ids"]["B"] == tokenizer(" B", add_special_tokens=False)["input_ids"]
    assert meta["template"]["name"] == "compact" and meta["template"]["fields"] == FIELDS
    assert "{implied_rate" in meta["template"]["text"]
    assert meta["spec"]["label"]["classes"] == CLASSES
    assert meta["lora"]["r"] == 4 and meta["dtype"] == "float32"
    assert meta["check"]["rows"] == 3 and meta["check"]["max_abs_difference"] <= TOLERANCE
    example = meta["examples"][0]
    np.testing.assert_allclose(list(example["probabilities"].values()), by_hand(out, [example["prompt"]])[0],
                               atol=TOLERANCE)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id and generation.get("do_sample") in (False, None)
    readme = (out / "README.md").read_text()
    assert "vllm serve" in readme and "--enable-lora" in readme and "korllama.json" in readme


def test_export_of_a_full_weight_run_scores_exactly_as_the_run(cli, run_dir, prompts, tmp_path):
    out = tmp_path / "full"
    code, stdout, err = cli("export", run_dir, "--out", out)
    assert code == 0, err
    assert "full model" in " ".join(stdout.split())
    model, tokenizer = load_export(out)
    _loaded = Run.load(run_dir)
    run_model, run_tokenizer, _ = _loaded.model, _loaded.tokenizer, _loaded.config
    expected = score(run_model, run_tokenizer, prompts, CLASSES)
    np.testing.assert_array_equal(score(model, tokenizer, prompts, CLASSES), expected)  # the same weights: exact
    np.testing.assert_allclose(by_hand(out, prompts), expected, atol=1e-6, rtol=0)
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["lora"] is None and meta["check"]["max_abs_difference"] == 0.0


def test_export_refusals(cli, run_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "config.yaml", unfinished / "config.yaml")
    code, _, err = cli("export", unfinished, "--out", tmp_path / "x")
    assert code == 2 and "has not finished training" in err and "--resume" in err
    code, _, err = cli("export", tmp_path / "nothing", "--out", tmp_path / "x")
    assert code == 2 and "not a korllama run" in err

    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    code, _, err = cli("export", run_dir, "--out", others)
    assert code == 2 and "other files" in err
    assert [p.name for p in others.iterdir()] == ["notes.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = cli("export", run_dir, "--out", a_file)
    assert code == 2 and "is a file" in err
    assert not (tmp_path / "x").exists()

    out = tmp_path / "export"
    assert cli("export", run_dir, "--out", out)[0] == 0
    code, _, err = cli("export", run_dir, "--out", out)
    assert code == 2 and "--overwrite" in err
    assert cli("export", run_dir, "--out", out, "--overwrite")[0] == 0  # its own files only: replaced
    (out / "thesis.docx").write_text("mine")  # a user's file beside korllama.json: never korllama's to delete
    code, _, err = cli("export", run_dir, "--out", out, "--overwrite")
    assert code == 2 and "did not write (thesis.docx" in err
    assert (out / "thesis.docx").read_text() == "mine" and (out / EXPORT_FILE).is_file()


def test_a_failed_export_leaves_nothing(run_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(Run.load(run_dir), tmp_path / "export")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy
