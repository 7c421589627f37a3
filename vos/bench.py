"""Benchmarks (scripts, not tests): they print figures.

  python -m vos.bench infer --video V.mp4 [--checkpoint C] [--short-side 288] [--loops 1] [key=value ...]
      end-to-end frames/s (decode -> PNGs written), time per stage, peak RSS. --loops N plays the video N times
      in a row to make a long one, for the memory-growth check.
  python -m vos.bench attention [blocks...]
      time and peak memory of each pixel-attention block (forward + backward) at 60x107, 120x214, 135x240.
  python -m vos.bench flops [lite0 hodor_swin_t]
      parameters and GFLOPs per frame at 480p and at the internal resolution for model configs.
  python -m vos.bench train --config configs/train/smoke.yaml [--steps 20] [key=value ...]
      training iterations/s and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from vos.config import CONFIG_DIR, InferConfig


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def bench_infer(a) -> None:
    from vos.config import load_config
    from vos.data import VideoFile, write_mask
    from vos.inference import Runner, probs_to_ids

    cfg = load_config(InferConfig, a.config, a.overrides + [f"short_side={a.short_side}"])
    runner = Runner(cfg, "hodor", a.checkpoint)
    device = runner.device
    video = VideoFile(a.video, short_side=cfg.short_side or None)
    H, W = video.native_size
    prop = runner.tracker()
    mask = np.zeros(video.size, np.float32)
    h, w = video.size
    mask[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 1
    n = len(video)
    order = [i for _ in range(a.loops) for i in range(n)]  # forward passes (reverse seeking is slow to decode)
    stages = defaultdict(float)
    rss_at = {}
    with tempfile.TemporaryDirectory() as out:
        t_start = time.perf_counter()
        for j, i in enumerate(order):
            t0 = time.perf_counter()
            frame = video[i]
            t1 = time.perf_counter()
            ids, probs = prop.step(frame, {1: mask} if j == 0 else None, out_size=(H, W))
            t2 = time.perf_counter()
            write_mask(Path(out) / f"{j:06d}.png", probs_to_ids(ids, probs))
            t3 = time.perf_counter()
            if j >= 3:  # skip warm-up
                stages["decode video"] += t1 - t0
                stages["model (features, decode, re-encode, upsample)"] += t2 - t1
                stages["write PNG"] += t3 - t2
            if j + 1 in (200, 2000) or j + 1 == len(order):
                rss_at[j + 1] = _rss_mb()
        total = time.perf_counter() - t_start
    timed = max(1, len(order) - 3)
    from vos.utils.precision import cpu_name

    print(f"video {a.video} ({W}x{H}), internal {w}x{h}, {len(order)} frames, {torch.get_num_threads()} threads, "
          f"device {device} ({cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
          f"{len(runner.models)} model(s); {runner.precision}")
    print(f"end to end: {len(order) / total:.2f} frames/s")
    for k, v in stages.items():
        print(f"  {k:<48} {1000 * v / timed:7.1f} ms/frame")
    print(f"stored descriptor frames: {prop.stored_frames}; RSS by frame: "
          + ", ".join(f"{k}: {v:.0f} MB" for k, v in rss_at.items()) + f"; peak RSS {peak_rss_mb():.0f} MB")


def report_flops(name: str, size=(480, 854), window: int = InferConfig.window) -> dict:
    """Parameters and GFLOPs of one propagation step (features of the frame, decoding with `window` past frames,
    re-encoding, one object), counted by torch.utils.flop_counter. torchvision's deformable conv is not counted
    by it, so its cost (2 * 9 * C * C * h * w per layer, plus the offset conv) is added by hand."""
    from torch.utils.flop_counter import FlopCounterMode

    from vos.config import ModelConfig, load_config
    from vos.model import HODOR

    cfg = load_config(ModelConfig, CONFIG_DIR / "model" / f"{name}.yaml", ["backbone_weights=null"])
    model = HODOR(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    x, masks = torch.rand(1, 3, *size), torch.zeros(1, 1, *size)
    masks[..., 100:300, 200:500] = 1
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        f = model.features(x)
        d = model.step(f, given=model.masks_to_s4(masks, f)).desc
        model.step(f, d[:, None].expand(1, window, -1, -1), torch.ones(1, window, d.shape[1], dtype=torch.bool))
    flops = fc.get_total_flops()
    if cfg.decoder.pixel_block == "deform":
        h, w = f.f8.shape[-2:]
        flops += cfg.decoder.layers * 2 * 9 * cfg.channels * cfg.channels * h * w
    return {"config": name, "params_M": params / 1e6, "gflops_per_frame": flops / 1e9, "size": size}


def bench_flops(a) -> None:
    for n in a.models or ["lite0", "hodor_swin_t"]:
        for size in ((480, 854), (288, 512)):  # 480p native, and the default internal resolution
            r = report_flops(n, size)
            print(f"{r['config']:>14}: {r['params_M']:.2f} M parameters, {r['gflops_per_frame']:.1f} GFLOPs per "
                  f"{r['size'][0]}x{r['size'][1]} frame (features + decode with W=7 + re-encode, one object)")


def bench_train(a) -> None:
    from vos.config import TrainConfig, load_config
    from vos.train.loop import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(TrainConfig, a.config, a.overrides + [f"optim.steps={a.steps}", f"out_dir={out}",
                                                                 "log.wandb=disabled", f"ckpt_every={a.steps}"])
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        trainer.fit()
        t1 = time.perf_counter()
    steady = (a.steps - 1) / (t1 - trainer.first_step_done)
    print(f"{a.config}: {a.steps} steps in {t1 - t0:.1f} s = {a.steps / (t1 - t0):.3f} it/s including start-up, "
          f"{steady:.3f} it/s after the first step (batch {cfg.optim.batch_size}, crop {list(cfg.data.size)}); "
          f"waiting for data {trainer.data_seconds:.1f} s; peak RSS {peak_rss_mb():.0f} MB")


def _attention_case(name: str, h: int, w: int, channels: int, heads: int, repeats: int) -> None:
    """Run in a fresh process: prints 'ms peak_MB' for forward+backward of one block."""
    from vos.model.pixel_blocks import build_pixel_block

    torch.manual_seed(0)
    block = build_pixel_block(name, channels, heads)
    x = torch.randn(1, channels, h, w, requires_grad=True)
    base = _rss_mb()
    block(x).square().mean().backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        block(x).square().mean().backward()
    ms = 1000 * (time.perf_counter() - t0) / repeats
    print(f"{ms:.1f} {peak_rss_mb() - base:.0f}")


def bench_attention(a) -> None:
    import subprocess
    import sys

    from vos.model.pixel_attention import ATTENTION_BLOCKS

    sizes = [(60, 107), (120, 214), (135, 240)]
    avail_gb = int(open("/proc/meminfo").read().split("MemAvailable:")[1].split()[0]) / 2 ** 20
    print(f"pixel blocks, forward + backward, batch 1, C={a.channels}, {a.heads} heads, {torch.get_num_threads()} "
          f"threads; peak = RSS growth of a fresh process")
    print(f"{'block':<18}" + "".join(f"{f'{h}x{w}':>24}" for h, w in sizes))
    for name in a.blocks or sorted(ATTENTION_BLOCKS):
        row = f"{name:<18}"
        for h, w in sizes:
            if name == "dense":
                need_gb = 3 * a.heads * (h * w) ** 2 * 4 / 2 ** 30  # logits, softmax, and their gradient
                if need_gb > 0.6 * avail_gb:
                    row += f"{f'OOM (needs ~{need_gb:.0f} GB)':>24}"
                    continue
            r = subprocess.run([sys.executable, "-c", f"from vos.bench import _attention_case; "
                                f"_attention_case('{name}', {h}, {w}, {a.channels}, {a.heads}, {a.repeats})"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                row += f"{'failed (OOM?)':>24}"
                continue
            ms, mb = r.stdout.split()[-2:]
            row += f"{f'{float(ms):.0f} ms / {mb} MB':>24}"
        print(row, flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vos.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("infer")
    pi.add_argument("--video", required=True)
    pi.add_argument("--checkpoint")
    pi.add_argument("--config")
    pi.add_argument("--short-side", type=int, default=None)
    pi.add_argument("--loops", type=int, default=1)
    pi.add_argument("overrides", nargs="*")
    pt = sub.add_parser("train")
    pt.add_argument("--config", required=True)
    pt.add_argument("--steps", type=int, default=20)
    pt.add_argument("overrides", nargs="*")
    pf = sub.add_parser("flops")
    pf.add_argument("models", nargs="*", help="model configs under configs/model/ (default: lite0 hodor_swin_t)")
    pa = sub.add_parser("attention")
    pa.add_argument("--channels", type=int, default=128)
    pa.add_argument("--heads", type=int, default=8)
    pa.add_argument("--repeats", type=int, default=2)
    pa.add_argument("blocks", nargs="*")
    a = ap.parse_args(argv)
    if a.cmd == "attention":
        bench_attention(a)
    elif a.cmd == "flops":
        bench_flops(a)
    elif a.cmd == "infer":
        if a.short_side is None:
            a.short_side = InferConfig.short_side
        bench_infer(a)
    else:
        bench_train(a)


if __name__ == "__main__":
    main()
