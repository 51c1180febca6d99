"""What the machine allows: training precision (bf16/fp16/fp32, measured per CPU width) and CPU threads (a setting
or the cores, never the load: the same command gives the same weights)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from korllama.errors import ConfigError


def cpu_bf16() -> bool:
    """The CPU has bf16 matrix instructions (AVX-512 BF16 or AMX), which oneDNN uses for bf16 matmuls: measured on
    this project's Xeon (AMX), a 483 x 576 x 1536 matmul runs at 862 GFLOP/s in bf16 vs 130 in fp32 on one core."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers of torch.cpu: absent means unknown, so no
        return False


CPU_BF16_MIN_WIDTH = 512  # hidden size from which bf16 autocast pays on a CPU (measured at 128 and 576, see below)


def training_precision(requested: str, device: torch.device, width: int | None = None) -> str:
    """fp32, fp16 or bf16 for the Trainer. auto: bf16 (fp16 before Ampere) on a GPU; on a CPU with bf16 matrix
    instructions (cpu_bf16) bf16 autocast for a model at least CPU_BF16_MIN_WIDTH wide (`width`, its hidden size:
    LoRA on SmolLM2, 576 wide, ran 1.4-1.6x faster, benchmarks/cpu_lora.py), fp32 for narrower ones (the tiny Llama,
    128 wide, trained 1.35x SLOWER under autocast: its matmuls are too small to win back the casts); else fp32. The
    weights stay float32 either way; autocast runs the matmuls in bf16."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        wide = width is None or width >= CPU_BF16_MIN_WIDTH
        return "bf16" if device.type == "cpu" and cpu_bf16() and wide else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use train.precision=auto, bf16 or fp32.")
    if requested == "bf16" and device.type != "cuda" and not (device.type == "cpu" and cpu_bf16()):
        raise ConfigError("train.precision=bf16 needs a CUDA GPU or a CPU with bf16 instructions (AVX-512 BF16 or "
                          "AMX); use train.precision=auto or fp32.")
    return requested


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's): a fact of the machine, not of its
    momentary load."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads(requested: int | None = None, processes: int = 1) -> int:
    """Torch threads for CPU work: `requested` (train.threads) when set, else the cores this process may use shared
    among `processes`, never more than the current setting (so OMP_NUM_THREADS, torch.set_num_threads or
    accelerate's per-process share stay upper bounds), at least one.

    Never the machine's load: the thread count decides the order of every float reduction, so a count that
    followed the load (as korllama's did until 2026-12) gave the same command other weights on a busy machine
    (issue 31: macro-F1 0.776 one time, 0.601 the next). A user on a shared machine who trains faster on fewer
    threads says so with train.threads=1, and the run records it."""
    if requested is not None:
        return max(1, requested)
    return max(1, min(torch.get_num_threads(), cpu_cores() // max(processes, 1)))


@contextmanager
def threads_for(device: torch.device, processes: int = 1, requested: int | None = None):
    """Within: torch threads set by cpu_threads(requested, processes) on a CPU device (restored after); yields the
    number used."""
    if device.type != "cpu":
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    threads = cpu_threads(requested, processes)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
