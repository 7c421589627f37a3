"""Test-time adaptation (OSVOS-style) for a descriptor-propagation model: before propagating, fine-tune a
copy of the model on the annotated frame(s) of THIS video, with the training code's own clips and loss:
static pseudo-clips of the given frame (warps + colour jitter) and, where the video has other frames, short
forward-backward cycles through them (the weakly-supervised regime, loss only on the given frame).

Only frames where EVERY object of the video is given are trained on: at a frame that gives some of them, the
others (given elsewhere) would be taught as background, and the adapted model loses them (on Cutie's judo clip,
objects given at frames 0, 5, 8 and 13, that took the two fighters from 53.8k px to 478 px). A video with no
such frame is not adapted (a warning says so).

The loaded model is never changed; with the same seed the result is the same.
"""

from __future__ import annotations

import copy
import time
import warnings

import cv2
import numpy as np
import torch

from vos.data import FrameSource
from vos.data.clips import make_sample
from vos.data.sources import Annotated
from vos.model import HODOR, Ensemble
from vos.train.cycles import CycleModel

HEADS = ("encoder.", "decoder.", "up8.", "head.", "desc_proj.", "catch_all.", "bg_query", "obj_query")


def _units(frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]]) -> list[Annotated]:
    """One unit per prompted frame: its frame at the internal resolution and its objects as an id map."""
    h, w = frames.size
    units = []
    for t, masks in sorted(prompts.items()):
        ids = np.zeros((h, w), np.uint8)
        for k, (obj, m) in enumerate(sorted(masks.items()), 1):
            ids[cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5] = k
        units.append(Annotated(len(frames), frames.__getitem__, lambda i, ids=ids: ids, t, False))
    return units


def adapt(model: HODOR | Ensemble, frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]],
          cfg) -> tuple[HODOR | Ensemble, float]:
    """A copy of `model` fine-tuned for cfg.steps steps on this video's prompts (frame -> {object id: mask});
    returns (the copy in eval mode, seconds spent). cfg: an AdaptConfig. An Ensemble's members are tuned one
    by one."""
    t0 = time.time()
    every = set().union(*(set(m) for m in prompts.values()))
    prompts = {t: m for t, m in prompts.items() if set(m) == every}
    if not prompts:
        warnings.warn("test-time adaptation skipped: it trains only on frames where every object is given, and no "
                      "frame of this video gives them all (give all objects at one frame to adapt)")
        return model, 0.0
    if isinstance(model, Ensemble):
        return Ensemble([adapt(m, frames, prompts, cfg)[0] for m in model.members]).eval(), time.time() - t0
    device = next(model.parameters()).device
    tuned = copy.deepcopy(model).to(memory_format=torch.contiguous_format).train()
    for name, p in tuned.named_parameters():
        p.requires_grad_(cfg.train == "all" or name.startswith(HEADS))
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    cycle = CycleModel(tuned, detach_masks=False, long_cycles=True)
    units = _units(frames, prompts)
    max_objects = max(len(m) for m in prompts.values())
    rng = np.random.default_rng(cfg.seed)
    size = (min(cfg.size, frames.size[0]), min(cfg.size, frames.size[1]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for step in range(cfg.steps):
            clips = []
            for _ in range(cfg.batch_size):
                unit = units[rng.integers(len(units))]
                regime = "static" if len(frames) < 3 or rng.random() < cfg.static_weight else "sparse"
                clips.append(make_sample(unit, regime, size, max_objects, 12, int(rng.integers(2 ** 31))))
            batch = {k: torch.stack([c[k] for c in clips]).to(device) for k in clips[0]}
            loss, _, _ = cycle(batch, step)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
    tuned.requires_grad_(False)
    return tuned.eval(), time.time() - t0
