"""What infer.py runs: sequences in, palette PNGs (and optionally overlays and probabilities) out."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from vos.baselines import BASELINES, BaselineStepper
from vos.checkpoint import load_models
from vos.data import DAVIS_PALETTE, list_sequences, open_frames, read_mask
from vos.inference.session import VideoSession
from vos.inference.tracker import Tracker, probs_to_ids
from vos.inference.writers import OverlayWriter, PngWriter, ProbsWriter
from vos.model import HODOR
from vos.utils import VosError, natural_key
from vos.utils.device import autocast, pick_device
from vos.utils.precision import choose

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default.pt"


@dataclass
class Job:
    """One sequence to segment: where its frames are, its prompts, where outputs go."""

    name: str
    frames_path: Path
    prompts: dict[str, Path]  # frame name -> mask PNG ("" = the first frame)
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


def prompt_mask_from_clicks(input_path: str, boxes: list[str], points: list[str], frame_index: int,
                            out_dir: str) -> tuple[str, str]:
    """Build the first mask from --box/--points on one frame (GrabCut), write it as <out>/<name>_prompt_<frame>.png;
    returns (mask path, frame name) for jobs_for_input."""
    from vos.data import write_mask
    from vos.inference.prompts import mask_from_prompts, parse_box, parse_point

    frames = open_frames(input_path)
    if not 0 <= frame_index < len(frames):
        raise VosError(f"--box-frame {frame_index} outside the video (0..{len(frames) - 1})")
    ids = mask_from_prompts(frames[frame_index], [parse_box(b) for b in boxes], [parse_point(q) for q in points])
    name = Path(input_path).stem if Path(input_path).is_file() else Path(input_path).name
    path = Path(out_dir) / f"{name}_prompt_{frames.names[frame_index]}.png"
    _writable(path.parent)
    write_mask(path, ids)
    return str(path), frames.names[frame_index]


def jobs_for_dataset(root: str, layout: str, split: str) -> list[Job]:
    jobs = []
    for s in list_sequences(root, layout, split):
        if not s.annotations:
            raise VosError(f"{s.name}: no annotation in {s.mask_dir}")
        ann = s.annotations if layout == "youtubevos" else dict([next(iter(s.annotations.items()))])
        jobs.append(Job(s.name, s.frame_dir, {s.frame_names[i]: p for i, p in ann.items()},
                        binary_255=layout == "davis2016"))
    return jobs


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise VosError(f"cannot write to output directory {folder}: {e.strerror}") from None


class Runner:
    """Runs a method (the model or a baseline) over jobs and writes the outputs.

    Fields: cfg (InferConfig), method, device, models (the loaded HODOR models; several run together),
    dtype and precision (the autocast dtype chosen for them, None = fp32, and a line saying how it was chosen:
    vos.utils.precision), adapt (test-time adaptation, handed to every new session, which runs it before it propagates;
    vos.adapt.runner wires it in, inference knows nothing of training)."""

    def __init__(self, cfg: DictConfig, method: str = "hodor", checkpoint: str | None = None,
                 models: list[HODOR] | None = None, adapt: Callable[[VideoSession], float] | None = None):
        """models: in-memory models (e.g. during training validation) instead of a checkpoint."""
        self.cfg, self.method, self.adapt = cfg, str(method), adapt
        self.device = pick_device(cfg.device)
        self.models: list[HODOR] = []
        self.dtype, self.precision = None, "precision: none (a baseline)"
        if self.method == "hodor":
            if models is None:
                ckpt = checkpoint or DEFAULT_CHECKPOINT
                if not Path(ckpt).is_file():
                    raise VosError(f"checkpoint not found: {ckpt}. Pass --checkpoint, or --method copy|flow")
                models = load_models(ckpt, self.device)
                if cfg.members:
                    if not all(0 <= i < len(models) for i in cfg.members):
                        raise VosError(f"members={list(cfg.members)}: {ckpt} holds {len(models)} model(s), "
                                       f"numbered 0..{len(models) - 1}")
                    models = [models[i] for i in cfg.members]
            # channels-last memory format, once: ~1.5x faster convolutions on the CPU (oneDNN), harmless on CUDA
            self.models = [m.eval().to(memory_format=torch.channels_last) for m in models]
            self.dtype, self.precision = choose(str(cfg.amp), self.device, self._signature(), self._one_pass)
        elif self.method not in BASELINES:
            raise VosError(f"unknown --method {method}; choose hodor, {', '.join(BASELINES)}")

    def _frame_size(self) -> tuple[int, int]:
        h = self.cfg.short_side or 480
        return h, round(h * 16 / 9)

    def _signature(self) -> str:
        c = self.models[0].cfg
        h, w = self._frame_size()
        return (f"{len(self.models)} x {c.backbone} C{c.channels} enc{c.encoder.layers} dec{c.decoder.layers} "
                f"{c.decoder.pixel_block}, {h}x{w}, window {self.cfg.window}")

    @torch.inference_mode()
    def _one_pass(self, dtype: torch.dtype | None) -> None:
        """One frame as the Tracker runs it (features, decode from a full window, re-encode) for every model:
        what the precision is chosen on."""
        img = torch.rand(1, 3, *self._frame_size(), device=self.device).contiguous(memory_format=torch.channels_last)
        mask = torch.zeros(1, 1, *img.shape[-2:], device=self.device)
        mask[..., img.shape[-2] // 3: 2 * img.shape[-2] // 3, img.shape[-1] // 3: 2 * img.shape[-1] // 3] = 1
        with autocast(self.device, dtype):
            for m in self.models:
                f = m.features(img)
                d = m.step(f, given=m.masks_to_s4(mask, f)).desc
                memory = d[:, None].expand(1, self.cfg.window, -1, -1)
                m.step(f, memory, torch.ones(memory.shape[:3], dtype=torch.bool, device=self.device)).probs.sum().item()

    def tracker(self):
        """A fresh per-frame stepper: a Tracker over the models, or the baseline."""
        if self.method == "hodor":
            return Tracker.from_config(self.models, self.cfg, self.dtype)
        return BaselineStepper(BASELINES[self.method])

    def new_session(self, source: str | Path) -> VideoSession:
        """A session over a video file or frame folder, decoded at the internal resolution, with a fresh tracker."""
        short = self.cfg.short_side if self.method == "hodor" else None
        frames = open_frames(source, short_side=short or None)
        return VideoSession(self.tracker(), frames, frames.native_size, self.adapt if self.method == "hodor" else None)

    def session(self, job: Job) -> tuple[VideoSession, "numpy.ndarray"]:  # noqa: F821
        """A session with the job's prompts added, and the palette of its first mask."""
        session = self.new_session(job.frames_path)
        frames = session.frames
        palette = None
        for name, path in job.prompts.items():
            idx = 0 if name == "" else (frames.names.index(name) if name in frames.names else None)
            if idx is None:
                raise VosError(f"mask {path} is named '{name}', which is not a frame of {job.frames_path}")
            ids, pal = read_mask(path, size=frames.native_size, binary_255_is_object=job.binary_255, min_area=4)
            palette = palette if palette is not None else pal
            session.add_mask(idx, ids)
        return session, DAVIS_PALETTE if palette is None else palette

    def run(self, job: Job, out_dir: Path, overlay_mp4: bool = False, save_probs: bool = False,
            progress: bool = True, on_frame: Callable[[int, int], None] | None = None) -> dict:
        """Segment every frame of a job (see run_session)."""
        t0 = time.time()
        session, palette = self.session(job)
        return self.run_session(session, job.name, Path(job.frames_path), out_dir, palette, overlay_mp4, save_probs,
                                progress, on_frame, t0)

    def run_session(self, session: VideoSession, name: str, source: Path, out_dir: Path, palette=DAVIS_PALETTE,
                    overlay_mp4: bool = False, save_probs: bool = False, progress: bool = True,
                    on_frame: Callable[[int, int], None] | None = None, t0: float | None = None) -> dict:
        """Segment (after adapting, if the session adapts) every frame of a session with its prompts, writing <out>/<name>/*.png
        (and <out>/<name>_overlay.mp4 of `source` / <out>/<name>_probs/): backwards from the first annotated frame
        to frame 0 when it is not frame 0, then forwards from it to the end (later annotations join or correct
        the forward pass as their frames come). on_frame(done, total) is called after each frame is written."""
        t0 = time.time() if t0 is None else t0
        frames = session.frames
        first = min(session.prompts)
        seq_dir = out_dir / name
        _writable(seq_dir)
        n = 0
        with contextlib.ExitStack() as stack:
            stack.callback(frames.close)
            writers = [PngWriter(seq_dir, frames.names, palette)]
            if save_probs:
                writers.append(ProbsWriter(out_dir / f"{name}_probs", frames.names))
            bar = stack.enter_context(tqdm(total=len(frames), desc=name, disable=not progress, unit="frame"))

            def write(writers, t, obj_ids, probs):
                nonlocal n
                ids = probs_to_ids(obj_ids, probs)
                for w in writers:
                    w.write(t, ids, obj_ids, probs)
                n += 1
                bar.update(1)
                if on_frame is not None:
                    on_frame(n, len(frames))
                bar.set_postfix(fps=f"{n / (time.time() - t0):.1f}")

            if first > 0:
                for t, obj_ids, probs in session.propagate(reverse=True):
                    if t < first:  # the annotated frame itself comes from the forward pass
                        write(writers, t, obj_ids, probs)
            if overlay_mp4:  # in time order: the frames before the annotation are read back from their PNGs
                ov = stack.enter_context(OverlayWriter(out_dir / f"{name}_overlay.mp4", source, frames.fps, palette))
                for t in range(first):
                    ov.write_ids(t, read_mask(seq_dir / f"{frames.names[t]}.png")[0])
                writers.append(ov)
            for t, obj_ids, probs in session.propagate():
                write(writers, t, obj_ids, probs)
        return {"frames": n, "seconds": time.time() - t0, "adapt_seconds": session.adapt_seconds}


def shard(jobs: list[Job]) -> list[Job]:
    """Under torchrun, each rank takes every WORLD_SIZE-th sequence."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return jobs[rank::world]


def wait_for_all_ranks() -> int:
    """Under torchrun: a barrier over every rank (gloo); returns this process's rank (0 without torchrun)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    rank = dist.get_rank()
    dist.destroy_process_group()
    return rank
