"""The GPU benchmark's own arithmetic and batching, checked on CPU (its figures come from a GPU; these do not)."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from korllama.config import LoraSettings
from korllama.model import skeleton, wrap_lora

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_lora_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_lora_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_count_uses_every_matmul_parameter_of_the_7b_architecture(bench):
    model = wrap_lora(skeleton("llama-2-ko-7b"), LoraSettings(target_modules=["q_proj", "v_proj"]))
    n = bench.matmul_parameters(model)
    assert n == 6_860_050_432 - 46_336 * 4_096  # all but the input embedding table (lm_head is not tied)
    # one row of 3 tokens: 4 N per token, plus 12 L d per causal pair (3 + 2 + 1 pairs)
    assert bench.step_flops(torch.tensor([3]), n, 32, 4096) == 4 * n * 3 + 12 * 32 * 4096 * 6


def test_packed_rows_give_the_same_loss_as_padded_rows(bench, tmp_path):
    # Packing is only right if rows cannot see each other: transformers reads the row boundaries from the
    # restarting position ids, and only without a KV cache. Same rows, same model: the loss must not change.
    args = argparse.Namespace(data=None, rows=24, tokenizer=None, workdir=str(tmp_path), smoke=True)
    tokenizer, rows, prompt_lengths, _, _ = bench.seed_rows(args)
    model, _, _ = bench.build_model(args, "sdpa", torch.device("cpu"), torch.float32)
    model.eval()
    padded, packed = (next(bench.batches(rows, prompt_lengths, 5, packing, tokenizer.pad_token_id,
                                         torch.Generator().manual_seed(1))) for packing in (False, True))
    assert packed["input_ids"].shape == (1, int(padded["attention_mask"].sum()))  # no padding left
    with torch.no_grad():
        losses = [bench.answer_only_loss(model, padded), bench.answer_only_loss(model, packed)]
        full = model(**{k: v for k, v in padded.items() if k != "lengths"}, use_cache=False).loss
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    assert torch.allclose(losses[0], full, atol=1e-5)  # logits at the answer positions only: the same loss
