"""Device choice and mixed precision, in one place for training and inference."""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext

import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto": this process's GPU (LOCAL_RANK under torchrun) when CUDA is present, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Training's mixed precision: bf16 on CUDA where supported, else fp16; bf16 on a CPU with native bf16
    instructions (AVX512-BF16 or AMX; oneDNN trained ~18% faster in bf16 on the machine of RESULTS.md); None
    (full precision) elsewhere, where bf16 would be emulated and slower. Inference chooses by timing instead:
    vos.utils.precision."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and native_cpu_bf16():
        return torch.bfloat16
    return None


@functools.cache  # asked on every autocast(), i.e. every frame and training step
def native_cpu_bf16() -> bool:
    # private torch.cpu helpers (present in the pinned torch); a torch without them gets fp32
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in `dtype` (None: full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
