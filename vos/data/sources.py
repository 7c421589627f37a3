"""Training data sources: a registry of the kinds a config's `data.sources[*].kind` may name.

Every source turns its configured DataSource into a list of `Annotated` units (one annotated image, or one
video with its annotated frame). Add a kind with `@register("name")`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vos.data.datasets import list_sequences
from vos.data.images import list_images, read_image
from vos.data.masks import read_mask
from vos.data.synthetic import make_clip
from vos.utils import VosError

REPO = Path(__file__).resolve().parents[2]  # relative pseudo-label folders are under the repository


@dataclass
class Annotated:
    """One training unit: a way to load frames, the annotated frame, and which frames have masks."""

    n_frames: int
    load_frame: Callable[[int], np.ndarray]  # -> HxWx3 uint8 RGB
    load_mask: Callable[[int], np.ndarray]  # -> HxW uint8 ids (only for frames with masks)
    annotated: int
    dense: bool


SOURCES: dict[str, Callable[[object, Path], list[Annotated]]] = {}


def register(kind: str):
    def wrap(fn):
        SOURCES[kind] = fn
        return fn
    return wrap


def units_from_source(src, data_root: str | Path = "") -> list[Annotated]:
    """Training units of one configured DataSource (see vos.config.DataSource); a relative root is resolved
    against data_root."""
    if src.kind not in SOURCES:
        raise VosError(f"unknown data source kind '{src.kind}'; choose one of {', '.join(sorted(SOURCES))}")
    root = Path(src.root) if not src.root or Path(src.root).is_absolute() else Path(data_root) / src.root
    return SOURCES[src.kind](src, root)


@register("synthetic")
def _synthetic(src, root: Path) -> list[Annotated]:
    def unit(i):
        cache = {}

        def clip():
            if not cache:
                cache["c"] = make_clip(10_000 + i, n_frames=16, size=(240, 320), n_objects=3, late_objects=0)
            return cache["c"]
        return Annotated(16, lambda t: clip()[0][t], lambda t: clip()[1][t], 0, src.regime == "dense")
    return [unit(i) for i in range(src.length)]


def pick_annotated(name: str, frame_names: list[str], annotated_frames: list[int], how: str, rng_seed: int) -> int:
    """The one annotated frame of a training video: first, middle, random, or listed in a JSON file."""
    if how.endswith(".json"):
        listed = json.loads(Path(how).read_text())
        if name not in listed:
            raise VosError(f"{how} lists no annotated frame for video '{name}'")
        frame = frame_names.index(str(listed[name])) if str(listed[name]) in frame_names else -1
        if frame not in annotated_frames:
            raise VosError(f"{how}: frame {listed[name]} of '{name}' has no annotation")
        return frame
    if how == "first":
        return annotated_frames[0]
    if how == "middle":
        return annotated_frames[len(annotated_frames) // 2]
    if how == "random":
        return annotated_frames[np.random.default_rng(rng_seed).integers(len(annotated_frames))]
    raise VosError(f"annotated must be first, middle, random or a .json file, not '{how}'")


def _video_dataset(src, root: Path) -> list[Annotated]:
    return _video_units(root, src.kind, src.split, src.regime, src.annotated, _pseudo_labels(src))


def _video_units(root: Path, layout: str, split: str, regime: str, annotated: str,
                 pseudo: Path | None) -> list[Annotated]:
    """One unit per sequence of a video dataset; masks beyond the annotated frame only in the dense regime (from
    the teacher's folder `pseudo` when given)."""
    units = []
    for s in list_sequences(root, layout, split):
        frames = s.frames()
        ann = sorted(s.annotations)
        if not ann:
            continue
        a = pick_annotated(s.name, s.frame_names, ann, annotated, sum(map(ord, s.name)))
        dense = regime == "dense"
        labels = {}
        if pseudo is not None:
            labels = {t: pseudo / s.name / f"{n}.png" for t, n in enumerate(s.frame_names)}
            missing = [p for p in labels.values() if not p.is_file()]
            if missing:
                raise VosError(f"pseudo-labels incomplete: {len(missing)} of {len(labels)} masks of '{s.name}' are "
                               f"missing (e.g. {missing[0]}); run the teacher experiment that writes {pseudo}")
        elif dense and len(ann) < len(frames):
            raise VosError(f"{s.name}: dense training needs every frame annotated ({len(ann)}/{len(frames)})")

        def load_mask(t, s=s, a=a, dense=dense, labels=labels):
            if t != a and not dense:  # the weakly-supervised regime never reads other masks
                raise VosError("internal: a non-annotated mask was requested in the sparse regime")
            return read_mask(labels[t])[0] if t != a and labels else s.read_mask(t)[0]
        units.append(Annotated(len(frames), frames.__getitem__, load_mask, a, dense))
    return units


def _pseudo_labels(src) -> Path | None:
    """The teacher's mask folder of a source (None: none), checked."""
    if not src.pseudo_labels:
        return None
    if src.regime != "dense":
        raise VosError(f"pseudo_labels {src.pseudo_labels} need regime: dense (got {src.regime}): the other regimes "
                       "never read masks beyond the annotated frame")
    p = Path(src.pseudo_labels)
    p = p if p.is_absolute() else REPO / p
    if not p.is_dir():
        raise VosError(f"pseudo-label folder not found: {p}; run the teacher experiment that writes it "
                       "(e.g. python -m vos.experiment pseudo_train20)")
    return p


for _kind in ("davis2016", "davis2017", "youtubevos"):
    register(_kind)(_video_dataset)


@register("composites")
def _composites(src, root: Path) -> list[Annotated]:
    """Multi-object training composites of the DAVIS-2016 videos of `split` under `root` (vos.data.composites:
    other videos' objects pasted in frame by frame), `length` sequences of max_gap + 1 frames, their masks taken
    from the teacher's `pseudo_labels` (no human mask beyond each video's first frame). Built once into
    data/<split>-<teacher>-<length>x<frames> in the repository (delete it when the teacher changes), then read as a
    DAVIS-2017 dataset. `overlap: more` flips the pasted objects to cover the ones below more
    (built to its own folder)."""
    from vos.data import composites

    if not src.pseudo_labels:
        raise VosError("a composites source needs pseudo_labels: the teacher's masks of every frame of its videos "
                       "(e.g. outputs/experiments/pseudo_train20, written by python -m vos.experiment pseudo_train20)")
    if root.name != "davis2016":
        raise VosError(f"a composites source pastes DAVIS-2016 videos: its root must be the davis2016 folder, not {root}")
    labels = Path(src.pseudo_labels)
    labels = labels if labels.is_absolute() else REPO / labels
    frames = src.max_gap + 1
    more = "-overlap_more" if src.overlap == "more" else ""
    out = REPO / "data" / f"{Path(src.split).stem}-{labels.name}-{src.length}x{frames}{more}"
    composites.build_once(out, "the training composites", lambda: composites.build(
        out, root.parent, src.split, src.length, labels=labels, max_frames=frames, overlap=str(src.overlap)))
    return _video_units(out, "davis2017", "val", src.regime, "first", None)


@register("static_folder")
def _static_folder(src, root: Path) -> list[Annotated]:
    """images/<name>.jpg|png with masks/<name>.png (palette ids)."""
    if not (root / "images").is_dir():
        raise VosError(f"static_folder source: no images/ folder in {root}")
    return [Annotated(1, lambda t, p=p: read_image(p), lambda t, p=p: read_mask(root / "masks" / f"{p.stem}.png")[0],
                      0, True) for p in list_images(root / "images")]


@register("coco")
def _coco(src, root: Path) -> list[Annotated]:
    from pycocotools.coco import COCO

    coco = COCO(src.coco_annotations)
    ids = [i for i in sorted(coco.getImgIds()) if coco.getAnnIds(imgIds=i, iscrowd=False)]

    def coco_mask(i):
        info = coco.loadImgs(i)[0]
        m = np.zeros((info["height"], info["width"]), np.uint8)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=i, iscrowd=False)), key=lambda a: -a["area"])
        for k, ann in enumerate(anns[:255], 1):
            m[coco.annToMask(ann) > 0] = k
        return m
    return [Annotated(1, lambda t, i=i: read_image(root / coco.loadImgs(i)[0]["file_name"]),
                      lambda t, i=i: coco_mask(i), 0, True) for i in ids]
