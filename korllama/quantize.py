"""4-bit base weights (`model.load_in_4bit`): QLoRA's NF4 with double quantisation, on any device where the installed
bitsandbytes can do it, CUDA and the CPU included (bitsandbytes 0.50 quantises and trains 4-bit on the CPU).

Whether it can is asked of bitsandbytes itself, not of the device's name: a 64-value tensor is quantised to NF4 on
the device and read back (`check_4bit`). An old bitsandbytes (CUDA only), a missing native library or a device it
has no kernels for fails that probe, and the user reads one sentence saying so.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import torch
from transformers import BitsAndBytesConfig
from transformers.utils import is_bitsandbytes_available
from transformers.utils import logging as hf_logging

from korllama.errors import ConfigError

INSTALL = "pip install 'bitsandbytes>=0.50'"


def quantisation(device: torch.device, dtype: torch.dtype) -> dict:
    """from_pretrained's keyword arguments for a 4-bit NF4 base on `device` computing in `dtype` (the original's
    recipe: nf4, double quantisation); a ConfigError when the installed bitsandbytes cannot do it there."""
    check_4bit(str(device))
    place = (device.index or 0) if device.type == "cuda" else device.type
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype),
            "device_map": {"": place}}  # quantised weights are placed while they load; a 4-bit model cannot .to()


@lru_cache
def check_4bit(device: str) -> None:
    """Quantise a small tensor to NF4 on the device and read it back; a ConfigError naming bitsandbytes' version and
    what failed when that is not possible. Asked once per device."""
    if not is_bitsandbytes_available():
        raise ConfigError(f"model.load_in_4bit needs the bitsandbytes package ({INSTALL}); install it or set "
                          "model.load_in_4bit=false.")
    try:
        installed = version("bitsandbytes")
    except PackageNotFoundError:
        installed = "?"
    try:
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit

        probe = torch.linspace(-1, 1, 64, device=device)
        packed, state = quantize_4bit(probe.reshape(2, 32), quant_type="nf4", compress_statistics=True)
        back = dequantize_4bit(packed, state).reshape(-1).float()
        if not torch.allclose(back, probe.float(), atol=0.15):  # NF4's widest step, 0.72 to 1, rounds by <= 0.14
            raise ValueError(f"values came back off by {float((back - probe.float()).abs().max()):.2f}")
    except Exception as exc:  # ImportError, RuntimeError/NotImplementedError (no kernel for the device), ...
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.load_in_4bit: the installed bitsandbytes {installed} cannot quantise to 4 bits on "
                          f"{device} ({reason}); {INSTALL} or set model.load_in_4bit=false.") from None


def keep_trainable(model) -> None:
    """Turn off bitsandbytes' CPU inference layout (AVX512-BF16 CPUs): at the first forward pass without gradients
    in eval mode it repacks each 4-bit weight in place for a fused kernel (bitsandbytes PR #1804) that has no
    backward pass, so after the Trainer's first evaluation no gradient flowed to the adapters of the layers below
    (measured: their grads None), and it needs in_features a multiple of 64, which the tests' tiny model is not.
    Off, every CPU computes the same way (dequantise, then matmul), in training and in scoring."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes.nn.Linear4bit
            module.support_avx512bf16_for_cpu = False


def dequantized(model, dtype: torch.dtype):
    """The 4-bit model with each bitsandbytes Linear4bit replaced by a plain Linear holding its NF4 weights read back
    to `dtype` (transformers' PreTrainedModel.dequantize, which calls bitsandbytes' dequantize_4bit): the weights a
    4-bit forward pass computes with, so an adapter merged into them scores as it did on the 4-bit base. The
    quantisation config is dropped: the model saves and reloads as an ordinary float checkpoint."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its note that the weights are cast to `dtype` is what is asked for here
    try:
        return model.dequantize(dtype=dtype)
    finally:
        hf_logging.set_verbosity(level)


def is_4bit(model) -> bool:
    """The model (or the base under a PeftModel) holds bitsandbytes 4-bit weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False)) or any(
        hasattr(m, "support_avx512bf16_for_cpu") for m in model.modules())
