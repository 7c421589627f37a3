"""Parameters and GFLOPs per frame at 480p for model configs: `python -m vos.model.report [lite0 hodor_swin_t]`.

GFLOPs are counted by torch.utils.flop_counter for one propagation step: features of the frame, decoding
with W=7 past frames, re-encoding, one object. torchvision's deformable conv is not counted by it, so its
cost (2 * 9 * C * C * h * w per layer, plus the offset conv) is added by hand.
"""

from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from vos.config import InferConfig, load_config
from vos.model import HODOR


def report(name: str, size=(480, 854), window: int = 7) -> dict:
    cfg = load_config(InferConfig, None, [f"model={name}", "model.backbone_weights=null"]).model
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


if __name__ == "__main__":
    for n in sys.argv[1:] or ["lite0", "hodor_swin_t"]:
        for size in ((480, 854), (288, 512)):  # 480p native, and the default internal resolution
            r = report(n, size)
            print(f"{r['config']:>14}: {r['params_M']:.2f} M parameters, {r['gflops_per_frame']:.1f} GFLOPs per "
                  f"{r['size'][0]}x{r['size'][1]} frame (features + decode with W=7 + re-encode, one object)")
