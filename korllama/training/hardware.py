"""What the machine allows: training precision (bf16/fp16/fp32, measured per CPU width) and CPU threads (fewer on
a busy machine)."""

from __future__ import annotations

import os
import statistics
import time
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


def cpu_threads(processes: int = 1) -> int:
    """Torch threads for CPU work now: one per core that other jobs leave idle, at least one, never more than the
    current setting (so OMP_NUM_THREADS, torch.set_num_threads or accelerate's per-process share stay upper bounds).

    Other jobs are counted as the runnable tasks of /proc/loadavg (median of a few samples, less this one) rather
    than the load average, which also counts this process's own recent work. Measured on the shared 2-core machine
    (benchmarks/cpu_lora.py, RESULTS.md): with other jobs keeping 6-12 tasks runnable, SmolLM2 + LoRA trained
    several times faster on one thread than on two — every op's two halves wait for each other while one is
    descheduled. Where /proc/loadavg does not exist the current setting is kept."""
    current = torch.get_num_threads()
    try:
        samples = []
        for _ in range(5):
            with open("/proc/loadavg", encoding="ascii") as fh:
                samples.append(int(fh.read().split()[3].split("/")[0]))
            time.sleep(0.01)
    except (OSError, ValueError, IndexError):
        return current
    others = max(0, round(statistics.median(samples)) - 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(current, (cores - others) // max(processes, 1)))


@contextmanager
def threads_for(device: torch.device, processes: int = 1):
    """Within: torch threads set by cpu_threads() on a CPU device (restored after); yields the number used."""
    if device.type != "cpu":
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    threads = cpu_threads(processes)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
