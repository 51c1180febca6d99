"""A LoRA training step of the exact Llama-2-ko-7B architecture (random weights) in bf16 on one GPU.

    python benchmarks/gpu_lora_step.py                    # the ladder of variants on a CUDA GPU
    python benchmarks/gpu_lora_step.py --only sdpa-mb16 packed-mb16-compiled --steps 20
    python benchmarks/gpu_lora_step.py --smoke            # a scaled-down model on CPU: checks every code path,
                                                          # its figures mean nothing

Weights do not matter for speed, so the model is beomi/open-llama-2-ko-7b's config.json (korllama.model's
BUILTIN_ARCHITECTURES["llama-2-ko-7b"]: 32 layers, hidden 4096, MLP 11008, vocab 46,336) with random weights,
wrapped with the seed's LoRA (r 8, alpha 16, dropout 0.1, q_proj + v_proj). Rows are the seed template's
prompts + answer + EOS (the original's prompts), answer-only labels as korllama trains. Their token lengths come
from `--tokenizer` (a local Llama tokenizer folder, if you have one) or a stand-in: korllama's byte-level BPE
trained on these prompts with digits one per token, as Llama-2's SentencePiece splits them (printed: mean and
max length). Data: --data if it exists, else korllama's synthetic loan table (same columns and formats).

Each variant runs in its own process (clean peak memory, no compile cache carried over) and prints real (non-pad)
tokens/s, peak GPU memory and MFU = achieved FLOP/s / 989 TFLOP/s (H200 dense bf16). FLOPs per row of s tokens:
  4 * N * s                (linear layers: forward 2N, activation gradients 2N; frozen weights get no weight
                            gradients; N = every weight matrix's parameters, lm_head included, the input
                            embedding table not, LoRA's own few included)
  + 12 * L * d * s(s+1)/2  (attention scores and values over the causal pairs: forward 4d per pair, backward 8d)
Recomputation (gradient checkpointing, flash attention's backward) is not counted: MFU counts the model's FLOPs.
The same model then rank-scores rows (korllama.predict.score, bf16, batch --score-batch): rows/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

PEAK_FLOPS = 989e12  # H200 SXM dense bf16 (NVIDIA's figure without sparsity)

# name -> its settings where they differ from DEFAULTS (the first, the original's shape); the ladder reads top down
VARIANTS = {
    "eager-mb4": dict(attn="eager", micro_batch=4, packing=False, compile=False, fused=False, ckpt=False,
                      answer_logits=False),  # the original's shape: batch 4, plain attention
    "sdpa-mb4": dict(attn="sdpa", micro_batch=4),
    "sdpa-mb16": dict(attn="sdpa", micro_batch=16),
    "sdpa-mb16-answer-logits": dict(attn="sdpa", micro_batch=16, answer_logits=True),
    "packed-mb16": dict(attn="flash", micro_batch=16, packing=True, answer_logits=True),
    "packed-mb16-fused": dict(attn="flash", micro_batch=16, packing=True, answer_logits=True, fused=True),
    "packed-mb16-compiled": dict(attn="flash", micro_batch=16, packing=True, answer_logits=True, fused=True,
                                 compile=True),
    "packed-mb32-compiled": dict(attn="flash", micro_batch=32, packing=True, answer_logits=True, fused=True,
                                 compile=True),
    "packed-mb64-compiled": dict(attn="flash", micro_batch=64, packing=True, answer_logits=True, fused=True,
                                 compile=True),
    "packed-mb64-ckpt": dict(attn="flash", micro_batch=64, packing=True, answer_logits=True, fused=True,
                             compile=False, ckpt=True),
}
DEFAULTS = VARIANTS["eager-mb4"]


# --- rows: real prompt lengths ----------------------------------------------------------------------------------

def seed_rows(args):
    """(tokenizer, token ids of prompt + answer + EOS per row, prompt lengths, prompts): the seed template's rows."""
    from transformers import AutoTokenizer

    from korllama.config import TinyModelConfig
    from korllama.data import read_table
    from korllama.model import build_tiny
    from korllama.prompts import answer, get_template
    from korllama.synth import synthetic_table

    if args.data and Path(args.data).is_file():
        table, source = read_table(args.data), args.data
    else:
        table = synthetic_table(args.rows, seed=0)
        source = f"synthetic table ({args.data or 'no --data'} not found)"
    table = table.sample(args.rows, seed=0)
    prompts = get_template(table.spec, "seed").render(table)
    if args.tokenizer:
        tokenizer, kind = AutoTokenizer.from_pretrained(args.tokenizer), args.tokenizer
    else:
        folder = Path(args.workdir) / "stand-in-tokenizer"
        if not (folder / "tokenizer.json").is_file():
            tiny = TinyModelConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                                   vocab_size=46336)
            build_tiny(prompts, folder, tiny, labels=list("ABCDEFG"))
        tokenizer, kind = AutoTokenizer.from_pretrained(folder), "stand-in BPE (digits one per token)"
    prompt_ids = tokenizer(prompts)["input_ids"]
    answers = tokenizer([answer(y) for y in table.labels], add_special_tokens=False)["input_ids"]
    rows = [p + a + [tokenizer.eos_token_id] for p, a in zip(prompt_ids, answers)]
    return tokenizer, rows, [len(p) for p in prompt_ids], prompts, f"{len(rows)} rows of {source}, tokenizer {kind}"


def batches(rows, prompt_lengths, micro_batch, packing, pad_id, generator):
    """Endless micro-batches of random rows: right-padded to the batch's longest row, or packed into one row."""
    while True:
        pick = torch.randint(len(rows), (micro_batch,), generator=generator).tolist()
        chosen = [rows[i] for i in pick]
        labels = [[-100] * prompt_lengths[i] + rows[i][prompt_lengths[i]:] for i in pick]  # answer + EOS only
        if packing:  # one row of all tokens; positions restart per row, which tells attention where rows end
            ids = torch.tensor([[t for r in chosen for t in r]])
            lab = torch.tensor([[t for r in labels for t in [-100] + r[1:]]])  # no target across a row boundary
            pos = torch.tensor([[p for r in chosen for p in range(len(r))]])
            lengths = torch.tensor([len(r) for r in chosen])
            yield {"input_ids": ids, "labels": lab, "position_ids": pos, "lengths": lengths}
        else:
            width = max(len(r) for r in chosen)
            ids = torch.full((micro_batch, width), pad_id)
            lab = torch.full((micro_batch, width), -100)
            mask = torch.zeros((micro_batch, width), dtype=torch.long)
            for j, (r, y) in enumerate(zip(chosen, labels)):
                ids[j, :len(r)], lab[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), torch.tensor(y), 1
            yield {"input_ids": ids, "labels": lab, "attention_mask": mask,
                   "lengths": torch.tensor([len(r) for r in chosen])}


# --- the model ---------------------------------------------------------------------------------------------------

def build_model(args, attn: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from korllama.config import LoraSettings
    from korllama.model import BUILTIN_ARCHITECTURES, wrap_lora

    raw = dict(BUILTIN_ARCHITECTURES["llama-2-ko-7b"])
    if args.smoke:  # same shape of model, a few hundred times smaller
        raw.update(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4)
    implementation = {"flash": _packed_attention()}.get(attn, attn)
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    config._attn_implementation = implementation
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built straight in bf16 on the device: no fp32 copy of 7B weights
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(default)
    model = wrap_lora(model, LoraSettings(r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    return model, config, implementation


def _packed_attention() -> str:
    """Attention for packed rows: flash-attention's varlen kernel if installed, else torch's flex attention (a
    block-sparse mask, built by transformers from the restarting position ids) on CUDA, else SDPA with a dense
    block-diagonal mask (CPU smoke runs; it computes every pair of the packed row, so it is slow on long rows)."""
    if not torch.cuda.is_available():
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "flex_attention"
    return "flash_attention_2"


def matmul_parameters(model) -> int:
    """Parameters that take part in matrix products per token: everything but the input embedding table."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embedding)


def step_flops(lengths: torch.Tensor, n_matmul: int, layers: int, hidden: int) -> float:
    s = lengths.double()
    return float((4 * n_matmul * s + 12 * layers * hidden * s * (s + 1) / 2).sum())


def answer_only_loss(model, batch):
    """Run the body, then the 46k-wide lm_head only where a label is set (a few positions per row, not all).

    use_cache=False matters beyond memory: with a cache, transformers does not look for packed rows in
    position_ids and lets them attend to each other."""
    body = model.get_base_model().model
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                  position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    where = targets != -100
    logits = model.get_base_model().lm_head(hidden[:, :-1][where])
    return torch.nn.functional.cross_entropy(logits.float(), targets[where])


def run_variant(args, name: str) -> dict:
    settings = DEFAULTS | VARIANTS[name]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer, rows, prompt_lengths, prompts, source = seed_rows(args)
    model, config, implementation = build_model(args, settings["attn"], device, dtype)
    if settings["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=5e-4, weight_decay=0.1,
                                  fused=settings["fused"] and device.type == "cuda")

    def loss_of(batch):
        if settings["answer_logits"]:
            return answer_only_loss(model, batch)
        return model(**{k: v for k, v in batch.items() if k != "lengths"}, use_cache=False).loss

    if settings["compile"]:
        loss_of = torch.compile(loss_of, dynamic=True)
    stream = batches(rows, prompt_lengths, settings["micro_batch"], settings["packing"], tokenizer.pad_token_id,
                     torch.Generator().manual_seed(0))
    n_matmul = matmul_parameters(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = flops = 0.0
    elapsed = 0.0
    for step in range(args.warmup + args.steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(stream).items()}
        _sync(device)
        began = time.perf_counter()
        loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= args.warmup:  # the first steps compile kernels and warm the allocator
            elapsed += time.perf_counter() - began
            tokens += float(batch["lengths"].sum())
            flops += step_flops(batch["lengths"].cpu(), n_matmul, config.num_hidden_layers, config.hidden_size)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    result = {"variant": name, "settings": settings, "attention": implementation, "device": str(device),
              "tokens_per_s": tokens / elapsed, "tflops": flops / elapsed / 1e12,
              "mfu": flops / elapsed / PEAK_FLOPS, "peak_gib": peak_gib, "loss": float(loss), "source": source,
              "mean_len": sum(len(r) for r in rows) / len(rows), "max_len": max(len(r) for r in rows),
              "n_matmul": n_matmul}
    if args.score:
        from korllama.predict import score

        model.eval()
        sample = prompts[:args.score_rows]
        score(model, tokenizer, sample[:args.score_batch], list("ABCDEFG"), args.score_batch)  # warm-up
        _sync(device)
        began = time.perf_counter()
        score(model, tokenizer, sample, list("ABCDEFG"), args.score_batch)
        _sync(device)
        result["score_rows_per_s"] = len(sample) / (time.perf_counter() - began)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/dacon-loan/train.csv")
    parser.add_argument("--tokenizer", help="a local tokenizer folder (e.g. the real Llama-2-ko tokenizer)")
    parser.add_argument("--rows", type=int, default=2000, help="rows whose prompts give the sequence lengths")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants only")
    parser.add_argument("--score-rows", type=int, default=1024, help="rows rank-scored after the last variant")
    parser.add_argument("--score-batch", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="scaled-down model on CPU: exercises the code only")
    parser.add_argument("--workdir", default="runs/bench-gpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--score", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a child process: one variant, one JSON line
        print(json.dumps(run_variant(args, args.variant)))
        return
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("No CUDA GPU here: this benchmark measures an H200-class GPU. Use --smoke to check it on CPU.")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    names = args.only or list(VARIANTS)
    results = []
    for i, name in enumerate(names):
        extra = ["--score"] if i == len(names) - 1 else []
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", name, *extra],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name:26} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name:26} {r['attention']:18} {r['tokens_per_s']:10.0f} tokens/s  {r['tflops']:7.1f} TFLOP/s  "
              f"MFU {r['mfu']:6.1%}  peak {r['peak_gib']:6.1f} GiB  loss {r['loss']:.3f}", flush=True)
    if not results:
        return
    r = results[-1]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else platform.machine()
    print(f"{gpu}, torch {torch.__version__}; rows: {r['source']}; tokens per row mean {r['mean_len']:.0f}, "
          f"max {r['max_len']}; matmul parameters {r['n_matmul']:,}; {args.steps} timed steps after {args.warmup}")
    if "score_rows_per_s" in r:
        print(f"rank scoring on the same model ({r['variant']}): {r['score_rows_per_s']:.0f} rows/s "
              f"(batch {args.score_batch}, {args.score_rows} rows)")


if __name__ == "__main__":
    main()
