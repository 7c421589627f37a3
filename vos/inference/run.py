"""What infer.py runs: sequences in, palette PNGs (and optionally overlays and probabilities) out."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from vos.baselines import BASELINES
from vos.config import ModelConfig, config_from_dict
from vos.data import DAVIS_PALETTE, list_sequences, open_frames, read_mask, write_mask
from vos.data.video import Mp4Writer
from vos.inference.predictor import Propagator, pick_device, probs_to_ids
from vos.inference.session import BaselineStepper, VideoSession
from vos.model import HODOR
from vos.utils import VosError, atomic_path, natural_key
from vos.utils.checkpoint import CheckpointError, load_checkpoint, load_weights

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default.pt"


def load_model(checkpoint: str | Path, device: torch.device) -> HODOR:
    """A HODOR model from a checkpoint that carries its own model config (weights_only loading)."""
    state = load_checkpoint(checkpoint)
    try:
        mcfg = config_from_dict(ModelConfig, state["config"]["model"])
    except (KeyError, VosError) as e:
        raise CheckpointError(f"{checkpoint}: no usable model config inside ({e})") from None
    # A frozen backbone is left out of training checkpoints: then it comes from its weights package again.
    has_backbone = any(k.startswith("backbone.") and k.endswith(".weight") for k in state["model"])
    if has_backbone or not mcfg.freeze_backbone:
        mcfg.backbone_weights = None  # the checkpoint holds all weights
    elif mcfg.backbone_weights is None:
        raise CheckpointError(f"{checkpoint} has no backbone weights and names no source for them")
    model = HODOR(mcfg)
    load_weights(model, state["model"], f"{checkpoint} does not fit the model it describes; is it a vos checkpoint "
                 "of this version?", may_miss=r"$^" if has_backbone else r"backbone\.")
    return model.to(device).eval().fuse_for_inference()


def overlay(frame: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    colour = palette[ids]
    out = frame.astype(np.float32)
    fg = ids > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colour[fg]
    return out.astype(np.uint8)


@dataclass
class Job:
    """One sequence to segment: where its frames are, its prompts, where outputs go."""

    name: str
    frames_path: Path
    prompts: dict[str, Path]  # frame name -> mask PNG
    binary_255: bool = False  # DAVIS-2016 masks


def jobs_for_input(input_path: str, mask: str | None, mask_frame: str | None, masks_dir: str | None) -> list[Job]:
    p = Path(input_path)
    if not p.exists():
        raise VosError(f"input not found: {p} (give a video file or a folder of frames)")
    if bool(mask) == bool(masks_dir):
        raise VosError("give exactly one of --mask (one PNG) or --masks (a folder of sparse PNGs named like frames)")
    if mask:
        prompts = {mask_frame or "": Path(mask)}
    else:
        d = Path(masks_dir)
        if not d.is_dir():
            raise VosError(f"mask folder not found: {d}")
        prompts = {q.stem: q for q in sorted(d.glob("*.png"), key=lambda q: natural_key(q.name))}
        if not prompts:
            raise VosError(f"no .png masks in {d}")
    return [Job(p.stem if p.is_file() else p.name, p, prompts)]


def jobs_for_dataset(root: str, layout: str, split: str) -> list[Job]:
    jobs = []
    for s in list_sequences(root, layout, split):
        if not s.annotations:
            raise VosError(f"{s.name}: no annotation in {s.mask_dir}")
        ann = s.annotations if layout == "youtubevos" else dict([next(iter(s.annotations.items()))])
        jobs.append(Job(s.name, s.frame_dir, {s.frame_names[i]: p for i, p in ann.items()},
                        binary_255=layout == "davis2016"))
    return jobs


class Runner:
    """Runs a method (the model or a baseline) over jobs and writes the outputs."""

    def __init__(self, cfg: DictConfig, method: str = "hodor", checkpoint: str | None = None,
                 model: HODOR | None = None):
        """model: an in-memory model (e.g. during training validation) instead of a checkpoint."""
        self.cfg, self.method = cfg, method
        self.device = pick_device(cfg.device)
        if method == "hodor":
            if model is not None:
                self.model = model.eval()
            else:
                ckpt = checkpoint or DEFAULT_CHECKPOINT
                if not Path(ckpt).is_file():
                    raise VosError(f"checkpoint not found: {ckpt}. Pass --checkpoint, or --method copy|flow")
                self.model = load_model(ckpt, self.device)
        elif method not in BASELINES:
            raise VosError(f"unknown --method {method}; choose hodor, {', '.join(BASELINES)}")

    def stepper(self):
        if self.method == "hodor":
            return Propagator(self.model, self.cfg.window, self.cfg.anchor_first, self.cfg.amp)
        return BaselineStepper(BASELINES[self.method]())

    def run(self, job: Job, out_dir: Path, overlay_mp4: bool = False, save_probs: bool = False,
            progress: bool = True) -> dict:
        short = self.cfg.short_side if self.method == "hodor" else None
        frames = open_frames(job.frames_path, short_side=short or None)
        native = frames.native_size
        session = VideoSession(self.stepper, frames, native)
        palette = None
        for name, path in job.prompts.items():
            idx = 0 if name == "" else (frames.names.index(name) if name in frames.names else None)
            if idx is None:
                raise VosError(f"mask {path} is named '{name}', which is not a frame of {job.frames_path}")
            ids, pal = read_mask(path, size=native, binary_255_is_object=job.binary_255, min_area=4)
            palette = palette if palette is not None else pal
            session.add_mask(idx, ids)
        palette = DAVIS_PALETTE if palette is None else palette
        seq_dir = out_dir / job.name
        try:
            seq_dir.mkdir(parents=True, exist_ok=True)
            probe = seq_dir / f".write_test{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise VosError(f"cannot write to output directory {seq_dir}: {e.strerror}") from None
        writer = Mp4Writer(out_dir / f"{job.name}_overlay.mp4", frames.fps) if overlay_mp4 else None
        raw = open_frames(job.frames_path) if overlay_mp4 and short else frames
        t0, n = time.time(), 0
        bar = tqdm(total=len(frames) - min(session.prompts), desc=job.name, disable=not progress, unit="frame")
        try:
            for t, obj_ids, probs in session.propagate():
                ids = probs_to_ids(obj_ids, probs)
                write_mask(seq_dir / f"{frames.names[t]}.png", ids, palette)
                if save_probs:
                    (out_dir / f"{job.name}_probs").mkdir(exist_ok=True)
                    with atomic_path(out_dir / f"{job.name}_probs" / f"{frames.names[t]}.npz") as tmp:
                        np.savez_compressed(tmp, ids=np.array(obj_ids),
                                            probs=(probs[1:].clamp(0, 1) * 255).round().byte().cpu().numpy())
                if writer is not None:
                    writer.write(overlay(raw[t], ids, palette))
                n += 1
                bar.update(1)
                bar.set_postfix(fps=f"{n / (time.time() - t0):.1f}")
        except BaseException as e:
            if writer is not None:
                writer.__exit__(type(e), e, None)
            raise
        finally:
            bar.close()
        if writer is not None:
            writer.__exit__(None, None, None)
        return {"frames": n, "seconds": time.time() - t0}


def shard(jobs: list[Job]) -> list[Job]:
    """Under torchrun, each rank takes every WORLD_SIZE-th sequence."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return jobs[rank::world]


