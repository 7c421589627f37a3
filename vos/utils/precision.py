"""Which precision to run a model in on this machine: chosen by timing it, not by a CPU flag.

On CPUs with native bf16 (AVX512-BF16, AMX), oneDNN's bf16 kernels were faster than fp32 on one machine and
1.1-1.6x slower on another (issue 21), so `auto` times a few passes of the loaded model in both precisions
once, keeps the faster and caches the answer per CPU model, torch version and model in the user's cache
directory ($VOS_CACHE_DIR, else $XDG_CACHE_HOME/vos, else ~/.cache/vos). On CUDA, `auto` is bf16 (fp16 where
bf16 is not supported); on a CPU without native bf16, fp32 (bf16 would be emulated).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from vos.utils.device import native_cpu_bf16
from vos.utils.io import atomic_path

NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def cache_file() -> Path:
    root = os.environ.get("VOS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vos"
    return Path(root) / "precision.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _seconds(run: Callable[[torch.dtype | None], None], dtype: torch.dtype | None) -> float:
    t = time.perf_counter()
    run(dtype)
    return time.perf_counter() - t


def choose(setting: str, device: torch.device, key: str, run: Callable[[torch.dtype | None], None],
           repeats: int = 3, timer: Callable = _seconds) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, a line saying what was chosen and why).

    setting: "auto", "true" (bf16, fp16 on CUDA without bf16) or "false" (fp32). key names the model (its
    architecture and input size): the cache keeps one answer per CPU model, torch version and key.
    run(dtype): one representative forward pass in that precision (timed by `timer(run, dtype)` in seconds)."""
    if setting == "false":
        return None, "precision fp32 (amp=false)"
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dtype, f"precision {NAMES[dtype]} (CUDA)"
    if setting == "true":
        return torch.bfloat16, "precision bf16 (amp=true)"
    if not native_cpu_bf16():
        return None, "precision fp32 (auto: this CPU has no native bf16)"
    cache_key = f"{cpu_name()} | torch {torch.__version__} | {key}"
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache_key in cache:
        c = cache[cache_key]
        return (torch.bfloat16 if c["choice"] == "bf16" else None), \
            f"precision {c['choice']} (auto, cached in {path}: fp32 {c['fp32_ms']:.1f} ms, bf16 {c['bf16_ms']:.1f} ms)"
    for dtype in (None, torch.bfloat16):  # warm-up: first passes allocate and pick kernels
        run(dtype)
    times = {None: [], torch.bfloat16: []}
    for _ in range(repeats):  # alternating, so that a change in the machine's load hits both
        for dtype in times:
            times[dtype].append(timer(run, dtype))
    ms = {NAMES[d]: 1000 * min(v) for d, v in times.items()}
    choice = "bf16" if ms["bf16"] < ms["fp32"] else "fp32"
    cache[cache_key] = {"choice": choice, "fp32_ms": ms["fp32"], "bf16_ms": ms["bf16"]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(cache, indent=1))
    except OSError:  # a read-only home: measure again next time
        pass
    return (torch.bfloat16 if choice == "bf16" else None), \
        f"precision {choice} (auto, measured: fp32 {ms['fp32']:.1f} ms, bf16 {ms['bf16']:.1f} ms per pass)"
