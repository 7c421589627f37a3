"""Test-time adaptation (OSVOS-style), above training and inference: before propagating, fine-tune a copy of
each model on the annotated frame(s) of THIS video with the training loop's own step (`Trainer.train_step`:
same cycles, loss, clipping and precision), on the training code's own clips: static pseudo-clips of the given
frame (warps + colour jitter) and, where the video has other frames, short forward-backward cycles through
them (the weakly-supervised regime, loss only on the given frame). The Tracker then runs the finished copies.

    runner = vos.adapt.runner(cfg)     # infer.py's Runner, adapting every job when cfg.adapt.steps > 0

Only frames where EVERY object of the video is given are trained on: at a frame that gives some of them, the
others (given elsewhere) would be taught as background, and the adapted model loses them (on Cutie's judo clip,
objects given at frames 0, 5, 8 and 13, that took the two fighters from 53.8k px to 478 px). A video with no
such frame is not adapted (a warning says so).

The loaded models are never changed; with the same seed the result is the same.
"""

from __future__ import annotations

import copy
import time
import warnings

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from vos.config import DataSource, TrainConfig, config_from_dict, to_dict
from vos.data import FrameSource
from vos.data.clips import make_sample
from vos.data.sources import Annotated
from vos.inference import Runner, VideoSession
from vos.model import HODOR
from vos.train.loop import Trainer


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


def _train_config(model: HODOR, cfg, amp: bool, device: torch.device) -> DictConfig:
    """The training config of one adaptation: the model's own, the adaptation's optimiser settings."""
    return config_from_dict(TrainConfig, {
        "model": to_dict(model.cfg), "device": str(device), "seed": cfg.seed, "log": {"wandb": "disabled"},
        "optim": {"lr": cfg.lr, "weight_decay": 0.0, "warmup": 0, "schedule": "constant", "steps": max(1, cfg.steps),
                  "batch_size": cfg.batch_size, "amp": amp, "train": str(cfg.train)}})


def finetune(model: HODOR, frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]], cfg,
             amp: bool = False) -> HODOR:
    """A copy of `model` trained for cfg.steps steps (cfg: an AdaptConfig) on this video's prompts (frame ->
    {object id: mask}, every object given at each frame), in eval mode with gradients off."""
    device = next(model.parameters()).device
    units = _units(frames, prompts)
    max_objects = max(len(m) for m in prompts.values())
    size = (min(cfg.size, frames.size[0]), min(cfg.size, frames.size[1]))
    max_gap = DataSource.max_gap  # the training data's own clip settings
    rng = np.random.default_rng(cfg.seed)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        trainer = Trainer(_train_config(model, cfg, amp, device), model=copy.deepcopy(model))
        for _ in range(cfg.steps):
            clips = []
            for _ in range(cfg.batch_size):
                unit = units[rng.integers(len(units))]
                regime = "static" if len(frames) < 3 or rng.random() < cfg.static_weight else "sparse"
                clips.append(make_sample(unit, regime, size, max_objects, max_gap, int(rng.integers(2 ** 31))))
            trainer.train_step([{k: torch.stack([c[k] for c in clips]).to(device) for k in clips[0]}])
    return trainer.model.requires_grad_(False).eval()


def adapt_models(models: list[HODOR], frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]], cfg,
                 amp: bool = False) -> list[HODOR] | None:
    """Fine-tuned copies of `models`, one each, or None (with a warning) when no frame gives every object."""
    every = set().union(*(set(m) for m in prompts.values()))
    prompts = {t: m for t, m in prompts.items() if set(m) == every}
    if not prompts:
        warnings.warn("test-time adaptation skipped: it trains only on frames where every object is given, and no "
                      "frame of this video gives them all (give all objects at one frame to adapt)")
        return None
    return [finetune(m, frames, prompts, cfg, amp) for m in models]


class Adaptation:
    """Runner.adapt: adapts a session's tracker to its video (cfg: an AdaptConfig); returns the seconds spent.
    It trains in the precision inference chose for the models (vos.utils.precision)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, session: VideoSession) -> float:
        t0 = time.time()
        tracker = session.tracker
        tuned = adapt_models(tracker.models, session.frames, session.prompts, self.cfg, amp=tracker.dtype is not None)
        tracker.use_adapted(tuned)
        return time.time() - t0


def runner(cfg: DictConfig, method: str = "hodor", checkpoint: str | None = None) -> Runner:
    """infer.py's Runner for an InferConfig, with test-time adaptation when cfg.adapt.steps > 0."""
    return Runner(cfg, method, checkpoint, adapt=Adaptation(cfg.adapt) if cfg.adapt.steps > 0 else None)
