"""Test-time adaptation (OSVOS-style), above training and inference: before propagating, fine-tune a copy of each
model on the annotated frame(s) of THIS video with the training loop's own step (`Trainer.train_step`: same
cycles, loss, clipping and precision), on the training code's own clips: static pseudo-clips of the given frame
(warps + colour jitter) and, where the video has other frames, short forward-backward cycles through them (the
weakly-supervised regime, loss only on the given frame). `clip_len` 4+ runs them as chains forward and back the
way inference runs (as the model trained on them), `merge_weight` pastes copies of the given objects in
(crossing, leaving and coming back); on st_given_leave2 both together cost 1.5 on val10 and 1.9 on the composites
(RESULTS.md), so they are off by default. The finished copy is a weight-space ensemble with the loaded model
(WiSE-FT: `adapt.mix` x the adapted weights + the rest x the loaded ones): the given frame cannot show how the
object will look later, and the loaded weights keep that (a turning car: RESULTS.md). The Tracker then runs the
finished copies.

    runner = vos.adapt.runner(cfg)     # infer.py's Runner, adapting every job when cfg.adapt.steps > 0

Objects may be given at different frames (Cutie's judo clip: frames 0, 5, 8 and 13). Each prompted frame
teaches the objects given there; where objects given at OTHER frames may be (the loaded model's prediction of
them there, dilated) is left out of the loss instead of being taught as background (that took judo's two
fighters from 53.8k px to 478 px when it was taught).

The loaded models are never changed; with the same seed the result is the same.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from typing import Callable

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from vos.config import DataSource, TrainConfig, config_from_dict, to_dict
from vos.data import FrameSource
from vos.data.augment import AUGMENT
from vos.data.clips import VOID, make_sample
from vos.data.sources import Annotated
from vos.inference import Runner, Tracker, VideoSession, probs_to_ids
from vos.model import HODOR
from vos.train.loop import Trainer
from vos.utils import release_memory
from vos.utils.precision import choose


def _units(frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]],
           elsewhere: dict[int, np.ndarray] | None = None) -> list[Annotated]:
    """One unit per prompted frame: its frame at the internal resolution and the objects given there as an id map,
    with VOID where objects given at other frames may be (`elsewhere`: frame -> (h, w) bool at internal size)."""
    h, w = frames.size
    # Frames are read again and again by the cycles (within max_gap of a prompted frame): decode each once. On an
    # mp4, decord's random access cost ~5 s per video of 20 steps.
    load = functools.lru_cache(maxsize=len(prompts) * (2 * DataSource.max_gap + 1))(frames.__getitem__)
    units = []
    for t, masks in sorted(prompts.items()):
        ids = np.zeros((h, w), np.uint8)
        if elsewhere is not None and t in elsewhere:
            ids[elsewhere[t]] = VOID
        for k, (obj, m) in enumerate(sorted(masks.items()), 1):
            ids[cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5] = k
        units.append(Annotated(len(frames), load, lambda i, ids=ids: ids, t, False))
    return units


def where_others_may_be(tracker: Tracker, frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]],
                        dilate: float = 0.03) -> dict[int, np.ndarray]:
    """For every prompted frame that does not give every object: where the objects given at OTHER frames may be
    there ((h, w) bool at the internal resolution): the loaded models' prediction of them, propagated forwards
    from the frames before and backwards from the frames after, dilated by `dilate` x the longer side."""
    every = set().union(*(set(m) for m in prompts.values()))
    todo = {t for t, m in prompts.items() if set(m) != every}
    if not todo:
        return {}
    h, w = frames.size
    session = VideoSession(Tracker(tracker.models, tracker.window, tracker.anchor_first, tracker.locality.radius,
                                   tracker.locality.floor, tracker.dtype, tracker.pixel_memory_every,
                                   tracker.pixel_memory_frames), frames, (h, w))
    session.prompts = prompts
    first, last = min(prompts), max(prompts)
    seen: dict[int, list[np.ndarray]] = {t: [] for t in todo}
    for reverse, start in ((False, first), (True, last)):
        for t, ids, probs in session.propagate(start=start, reverse=reverse):
            if t in todo:
                labels = probs_to_ids(ids, probs)
                seen[t].append(np.isin(labels, [o for o in ids if o not in prompts[t]]))
            if (t >= last and not reverse) or (t <= first and reverse):
                break
    r = max(1, round(dilate * max(h, w)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return {t: cv2.dilate(np.logical_or.reduce(maps).astype(np.uint8), kernel) > 0 for t, maps in seen.items()}


def _train_config(model: HODOR, cfg, amp: bool, device: torch.device) -> DictConfig:
    """The training config of one adaptation: the model's own, the adaptation's optimiser settings."""
    return config_from_dict(TrainConfig, {
        "model": to_dict(model.cfg), "device": str(device), "seed": cfg.seed, "log": {"wandb": "disabled"},
        "optim": {"lr": cfg.lr, "weight_decay": 0.0, "warmup": cfg.warmup, "schedule": str(cfg.schedule),
                  "steps": max(1, cfg.steps),
                  "batch_size": cfg.batch_size, "amp": amp, "train": str(cfg.train)}})


def finetune(model: HODOR, frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]], cfg,
             amp: bool = False, on_step: Callable[[], None] | None = None,
             elsewhere: dict[int, np.ndarray] | None = None, deadline: float | None = None) -> HODOR:
    """A copy of `model` trained for cfg.steps steps (cfg: an AdaptConfig) on this video's prompts (frame ->
    {object id: mask}), in eval mode with gradients off. Each prompted frame teaches the objects given there;
    `elsewhere` (where_others_may_be) marks where objects given at other frames may be: left out of the loss.
    deadline (time.perf_counter() value): training ends by then; when the steps would not fit, the learning-rate
    schedule is shortened, from the measured time per step (after the first, which also builds the trainer), to
    end within it (rather than stopping mid-schedule at a high learning rate), with a warning. on_step() is called
    after every step. The copy's weights end cfg.mix of the way from the loaded ones to the trained ones."""
    device = next(model.parameters()).device
    units = _units(frames, prompts, elsewhere)
    max_objects = max(len(m) for m in prompts.values())
    size = (min(cfg.size, frames.size[0]), min(cfg.size, frames.size[1]))
    max_gap = DataSource.max_gap  # the training data's own clip settings
    rng = np.random.default_rng(cfg.seed)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        trainer = Trainer(_train_config(model, cfg, amp, device), model=copy.deepcopy(model))
        planned = trainer.cfg.optim  # its `steps` is the schedule's length, read by the scheduler at every step
        while trainer.step < planned.steps:
            clips = []
            for _ in range(cfg.batch_size):
                unit = units[rng.integers(len(units))]
                if len(frames) >= cfg.clip_len and rng.random() >= cfg.static_weight:
                    regime = "sparse"
                else:
                    regime = "merge" if cfg.merge_weight and rng.random() < cfg.merge_weight else "static"
                clips.append(make_sample(unit, regime, size, max_objects, max_gap, int(rng.integers(2 ** 31)),
                                         background=unit, aug=AUGMENT["merge_leave"] if regime == "merge" else None,
                                         clip_len=cfg.clip_len))
            trainer.train_step([{k: torch.stack([c[k] for c in clips]).to(device) for k in clips[0]}])
            if deadline is not None:
                now, done = time.perf_counter(), trainer.step
                if done == 1:  # the first step also paid for the trainer's build and the first decodes
                    first, per_step = now, now - start
                else:
                    per_step = (now - first) / (done - 1)
                fit = done + int((deadline - now) / per_step)
                planned.steps = max(done, min(cfg.steps, fit))  # re-estimated at every step, either way
            if on_step is not None:
                on_step()
    if planned.steps < cfg.steps:
        warnings.warn(f"test-time adaptation: {trainer.step} of {cfg.steps} steps (adapt.seconds reached; the "
                      "learning-rate schedule was shortened to end in time)")
    tuned = trainer.model.requires_grad_(False).eval()
    if cfg.mix < 1:  # a weight-space ensemble with the loaded model (WiSE-FT): keeps what the given frame cannot show
        with torch.no_grad():
            for p, p0 in zip(tuned.parameters(), model.parameters(), strict=True):
                p.lerp_(p0, 1 - cfg.mix)
    return tuned


def adapt_models(tracker: Tracker, frames: FrameSource, prompts: dict[int, dict[int, np.ndarray]], cfg,
                 amp: bool = False, on_step: Callable[[], None] | None = None,
                 deadline: float | None = None) -> list[HODOR]:
    """Fine-tuned copies of the tracker's loaded models, one each. Objects may be given at different frames.
    deadline (time.perf_counter() value): all of it ends by then, each model in its share of the time left."""
    elsewhere = where_others_may_be(tracker, frames, prompts)
    tuned, n = [], len(tracker.models)
    for i, m in enumerate(tracker.models):
        now = time.perf_counter()
        share = None if deadline is None else now + (deadline - now) / (n - i)
        tuned.append(finetune(m, frames, prompts, cfg, amp, on_step, elsewhere, share))
    return tuned


class Adaptation:
    """Runner.adapt: adapts a session's tracker to its video (cfg: an AdaptConfig); returns the seconds spent.

    It trains in the faster precision for a training step on this machine (`amp`, as InferConfig.amp: auto times
    it once and caches it, vos.utils.precision), shows a progress line
    ("adapting to the video: 9 s") unless progress=False, and reports each step to on_progress(done, total,
    seconds) if given (e.g. the app). cfg.seconds is a budget for all of it: when the steps would not fit, the
    schedules are shortened to end within it, with a warning. Anything
    that goes wrong inside falls back to the loaded models, with a warning: the video is still segmented."""

    def __init__(self, cfg, progress: bool = True, on_progress: Callable[[int, int, float], None] | None = None,
                 amp: str = "auto"):
        self.cfg, self.progress, self.on_progress, self.amp = cfg, progress, on_progress, str(amp)
        self.precision = ""  # how the training precision was chosen, once it was

    def _bf16(self, session: VideoSession) -> bool:
        """Whether to train in bf16: timed on this machine like inference's precision, but for a training step
        (on one CPU, bf16 inference was 1.4x faster and bf16 training 1.1x slower)."""
        model = session.tracker.models[0]
        one = copy.deepcopy(self.cfg)
        one.steps = 1
        c = model.cfg
        key = (f"adaptation step: {c.backbone} C{c.channels} enc{c.encoder.layers} dec{c.decoder.layers}, "
               f"{self.cfg.batch_size} x {self.cfg.size}px")
        device = next(model.parameters()).device
        dtype, self.precision = choose(self.amp, device, key,
                                       lambda d: finetune(model, session.frames, session.prompts, one, amp=d is not None))
        return dtype is not None

    def __call__(self, session: VideoSession) -> float:
        t0 = time.perf_counter()
        tracker = session.tracker
        total = self.cfg.steps * len(tracker.models)
        bar = tqdm(total=total, desc="adapting to the video", disable=not self.progress, leave=False,
                   bar_format="{desc}: {elapsed} ({n_fmt}/{total_fmt} steps)")
        done = 0

        def on_step() -> None:
            nonlocal done
            done += 1
            bar.update(1)
            if self.on_progress is not None:
                self.on_progress(done, total, time.perf_counter() - t0)

        try:
            bf16 = self._bf16(session)
            deadline = t0 + self.cfg.seconds if self.cfg.seconds else None
            tuned = adapt_models(tracker, session.frames, session.prompts, self.cfg, bf16, on_step, deadline)
        except Exception as e:  # noqa: BLE001 -- a failure here must not lose the run
            warnings.warn(f"test-time adaptation failed ({type(e).__name__}: {e}); propagating with the loaded "
                          "model instead")
            tuned = None
        finally:
            bar.close()
            release_memory()  # the training's activations, before propagation allocates its own
        tracker.use_adapted(tuned)
        return time.perf_counter() - t0


def runner(cfg: DictConfig, method: str = "hodor", checkpoint: str | None = None, progress: bool = True,
           on_progress: Callable[[int, int, float], None] | None = None) -> Runner:
    """infer.py's Runner for an InferConfig, with test-time adaptation when cfg.adapt.steps > 0 (see Adaptation
    for progress and on_progress)."""
    adapt = Adaptation(cfg.adapt, progress, on_progress, cfg.amp) if cfg.adapt.steps > 0 else None
    return Runner(cfg, method, checkpoint, adapt=adapt)
