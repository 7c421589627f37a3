"""Procedural video clips with exact ground truth, deterministic by seed.

Textured objects move, rotate and scale over a textured, panning background; they occlude each other
(fixed depth order), may leave and re-enter the frame, and some first appear mid-video. Used by tests,
smoke training and the demo, so rendering is a handful of OpenCV warps per frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vos.data.masks import write_mask
from vos.data.video import Mp4Writer
from vos.utils import atomic_path


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise plus stripes: gives features something to latch on to."""
    base = rng.uniform(0, 255, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    tex = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.25)
    stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None]
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    tex = 0.55 * tex + 0.45 * colour * (0.5 + 0.5 * stripes)
    return np.clip(tex, 0, 255).astype(np.uint8)


def _shape(rng: np.random.Generator, s: int) -> np.ndarray:
    """A random star-convex polygon filling an s x s canvas."""
    k = int(rng.integers(5, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.45, 1.0, k) * s / 2 * 0.95
    pts = np.stack([s / 2 + radii * np.cos(angles), s / 2 + radii * np.sin(angles)], 1)
    m = np.zeros((s, s), np.uint8)
    cv2.fillPoly(m, [pts.astype(np.int32)], 1)
    return m


@dataclass
class _Object:
    tex: np.ndarray
    shape: np.ndarray
    start: int
    pos: np.ndarray
    vel: np.ndarray
    angle: float
    spin: float
    scale: float
    grow: float


def make_clip(
    seed: int,
    n_frames: int = 30,
    size: tuple[int, int] = (480, 854),
    n_objects: int = 3,
    late_objects: int = 1,
    leave_and_return: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a clip: frames (T, H, W, 3) uint8 RGB and masks (T, H, W) uint8 with ids 1..n_objects.

    `late_objects` of the objects first appear after frame 0. With `leave_and_return`, object 1 exits the frame
    mid-clip and comes back.
    """
    rng = np.random.default_rng(seed)
    H, W = size
    diag = float(np.hypot(H, W))
    bg = _texture(rng, int(H * 1.5), int(W * 1.5))
    bg_vel = rng.uniform(-1.5, 1.5, 2) * diag / 600
    objs = []
    for i in range(n_objects):
        s = int(rng.uniform(0.18, 0.32) * min(H, W)) * 2
        start = 0 if i < n_objects - late_objects else int(rng.integers(max(1, n_frames // 4), max(2, n_frames // 2)))
        pos = rng.uniform([0.25 * W, 0.25 * H], [0.75 * W, 0.75 * H])
        vel = rng.uniform(-1, 1, 2) * diag / 200
        if leave_and_return and i == 0:
            # out and back: exits across the nearest vertical edge by mid-clip, then returns.
            pos = np.array([0.3 * W, 0.5 * H])
            vel = np.array([-(0.3 * W + s) * 2.2 / max(1, n_frames), 0.0])
        objs.append(_Object(_texture(rng, s, s), _shape(rng, s), start, pos, vel, rng.uniform(0, 360),
                            rng.uniform(-4, 4), 1.0, rng.uniform(-0.01, 0.01)))
    frames = np.empty((n_frames, H, W, 3), np.uint8)
    masks = np.zeros((n_frames, H, W), np.uint8)
    for t in range(n_frames):
        off = (np.array([0.25 * W, 0.25 * H]) + bg_vel * t) % np.array([0.5 * W, 0.5 * H])
        ox, oy = int(off[0]), int(off[1])
        frame = bg[oy:oy + H, ox:ox + W].copy()
        mask = masks[t]
        for i, o in enumerate(objs):
            if t < o.start:
                continue
            dt = t - o.start
            if leave_and_return and i == 0 and t > n_frames // 2:
                dt_back = n_frames // 2 - o.start
                p = o.pos + o.vel * dt_back - o.vel * (t - n_frames // 2)
            else:
                p = o.pos + o.vel * dt
            if not (leave_and_return and i == 0):
                for d, lim in ((0, W), (1, H)):  # bounce the others so they stay mostly visible
                    period = 2 * lim
                    q = p[d] % period
                    p[d] = q if q < lim else period - q
            s = o.shape.shape[0]
            scale = float(np.clip(o.scale * (1 + o.grow) ** dt, 0.6, 1.6))
            M = cv2.getRotationMatrix2D((s / 2, s / 2), o.angle + o.spin * dt, scale)
            M[:, 2] += p - s / 2
            sh = cv2.warpAffine(o.shape, M, (W, H), flags=cv2.INTER_NEAREST) > 0
            tx = cv2.warpAffine(o.tex, M, (W, H), flags=cv2.INTER_LINEAR)
            frame[sh] = tx[sh]
            mask[sh] = i + 1
        frames[t] = frame
    # light sensor noise so that identical colours are not trivially matched
    noise = np.random.default_rng(seed + 1).normal(0, 3, frames.shape[1:]).astype(np.int16)
    frames = np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return frames, masks


def write_mp4(path: str | Path, frames, fps: float = 24.0) -> None:
    """Encode RGB frames (an iterable of HxWx3 uint8) as an H.264 mp4, atomically."""
    with Mp4Writer(path, fps) as w:
        for f in frames:
            w.write(f)


def _write_jpg(path: Path, frame: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


def write_frames(folder: str | Path, frames) -> Path:
    """A frame folder (00000.jpg, ...) of RGB frames: the input layout of infer.py --input FOLDER."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        _write_jpg(folder / f"{t:05d}.jpg", f)
    return folder


def write_davis(root: str | Path, clips: dict[str, tuple[np.ndarray, np.ndarray]], split: str = "val",
                layout: str = "davis2017") -> Path:
    """Write clips in the DAVIS layout with every frame annotated (davis2016 layout: 0/255 of object 1)."""
    root = Path(root)
    sets = root / "ImageSets" / ("2017" if layout == "davis2017" else "480p")
    sets.mkdir(parents=True, exist_ok=True)
    for name, (frames, masks) in clips.items():
        fd, md = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        fd.mkdir(parents=True, exist_ok=True)
        md.mkdir(parents=True, exist_ok=True)
        for t, (f, m) in enumerate(zip(frames, masks)):
            _write_jpg(fd / f"{t:05d}.jpg", f)
            if layout == "davis2016":
                cv2.imwrite(str(md / f"{t:05d}.png"), ((m == 1) * 255).astype(np.uint8))
            else:
                write_mask(md / f"{t:05d}.png", m)
    (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in clips))
    return root


def write_youtubevos(root: str | Path, clips: dict[str, tuple[np.ndarray, np.ndarray]], split: str = "valid",
                     stride: int = 5) -> Path:
    """Write clips in the YouTube-VOS layout: every `stride`-th frame listed, and one sparse annotation per
    object at the listed frame where it first appears (holding only the objects new at that frame)."""
    base = Path(root) / split
    meta: dict = {"videos": {}}
    for name, (frames, masks) in clips.items():
        fd, md = base / "JPEGImages" / name, base / "Annotations" / name
        fd.mkdir(parents=True, exist_ok=True)
        md.mkdir(parents=True, exist_ok=True)
        listed = list(range(0, len(frames), stride))
        objects, seen = {}, set()
        for t in listed:
            _write_jpg(fd / f"{t:05d}.jpg", frames[t])
            new = [int(i) for i in np.unique(masks[t]) if i and int(i) not in seen]
            if new:
                write_mask(md / f"{t:05d}.png", np.where(np.isin(masks[t], new), masks[t], 0))
            seen.update(new)
            for i in [int(i) for i in np.unique(masks[t]) if i]:
                objects.setdefault(str(i), {"category": "thing", "frames": []})["frames"].append(f"{t:05d}")
        meta["videos"][name] = {"objects": objects}
    (base / "meta.json").write_text(json.dumps(meta))
    return Path(root)


def square_clip(paths: list[tuple], n: int, size: int = 40, frame_size: tuple[int, int] = (192, 320),
                colours: dict[int, tuple[int, int, int]] | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat squares moving in straight lines over smooth noise: the simplest clip a trained model must track.
    paths: (x0, y0, vx, vy[, first frame]) per object id 1, 2, ... (pixels, pixels per frame); every square is red
    (look-alikes) unless `colours` says otherwise; later ids are drawn over earlier ones.
    Returns frames (n, H, W, 3) uint8 and id maps (n, H, W) uint8."""
    H, W = frame_size
    rng = np.random.default_rng(seed)
    bg = cv2.resize(rng.normal(0, 1, (max(1, H // 8), max(1, W // 8), 3)), (W, H)) * 20 + 110
    frames, masks = np.zeros((n, H, W, 3), np.uint8), np.zeros((n, H, W), np.uint8)
    for t in range(n):
        f = bg.copy()
        for k, (x0, y0, vx, vy, *start) in enumerate(paths, 1):
            if t < (start[0] if start else 0):
                continue
            x, y = max(0, int(x0 + vx * t)), max(0, int(y0 + vy * t))
            f[y:y + size, x:x + size] = (colours or {}).get(k, (200, 60, 40))
            masks[t, y:y + size, x:x + size] = k
        frames[t] = np.clip(f, 0, 255)
    return frames, masks
