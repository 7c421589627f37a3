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
from vos.checkpoint import load_model
from vos.data import DAVIS_PALETTE, list_sequences, open_frames, read_mask
from vos.inference.predictor import Propagator, probs_to_ids
from vos.inference.session import VideoSession
from vos.inference.writers import OverlayWriter, PngWriter, ProbsWriter
from vos.model import HODOR, Ensemble
from vos.utils import VosError, natural_key
from vos.utils.device import pick_device

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
    """Runs a method (the model or a baseline) over jobs and writes the outputs."""

    def __init__(self, cfg: DictConfig, method: str = "hodor", checkpoint: str | None = None,
                 model: HODOR | Ensemble | None = None):
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

    def stepper(self, model: HODOR | Ensemble | None = None):
        if self.method == "hodor":
            return Propagator(model or self.model, self.cfg.window, self.cfg.anchor_first, self.cfg.amp, self.cfg.locality)
        return BaselineStepper(BASELINES[self.method]())

    def adapt(self, session: VideoSession) -> float:
        """With adapt.steps > 0: fine-tune a copy of the model on the session's prompts and let the session use
        it (the loaded model is untouched). Returns the seconds spent."""
        if self.method != "hodor" or self.cfg.adapt.steps <= 0:
            return 0.0
        from vos.train.adapt import adapt

        tuned, seconds = adapt(self.model, session.frames, session.prompts, self.cfg.adapt)
        session.make_stepper = lambda: self.stepper(tuned)
        return seconds

    def session(self, job: Job) -> tuple[VideoSession, "numpy.ndarray"]:  # noqa: F821
        """A session with the job's prompts added, and the palette of its first mask."""
        short = self.cfg.short_side if self.method == "hodor" else None
        frames = open_frames(job.frames_path, short_side=short or None)
        session = VideoSession(self.stepper, frames, frames.native_size)
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
        """Segment every frame: backwards from the first annotated frame to frame 0 when it is not frame 0, then
        forwards from it to the end (later annotations join or correct the forward pass as their frames come).
        on_frame(done, total) is called after each frame is written (e.g. for a progress bar)."""
        t0 = time.time()
        session, palette = self.session(job)
        adapt_seconds = self.adapt(session)
        frames = session.frames
        first = min(session.prompts)
        seq_dir = out_dir / job.name
        _writable(seq_dir)
        n = 0
        with contextlib.ExitStack() as stack:
            stack.callback(frames.close)
            writers = [PngWriter(seq_dir, frames.names, palette)]
            if save_probs:
                writers.append(ProbsWriter(out_dir / f"{job.name}_probs", frames.names))
            bar = stack.enter_context(tqdm(total=len(frames), desc=job.name, disable=not progress, unit="frame"))

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
                ov = stack.enter_context(OverlayWriter(out_dir / f"{job.name}_overlay.mp4", Path(job.frames_path),
                                                       frames.fps, palette))
                for t in range(first):
                    ov.write_ids(t, read_mask(seq_dir / f"{frames.names[t]}.png")[0])
                writers.append(ov)
            for t, obj_ids, probs in session.propagate():
                write(writers, t, obj_ids, probs)
        return {"frames": n, "seconds": time.time() - t0, "adapt_seconds": adapt_seconds}


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
