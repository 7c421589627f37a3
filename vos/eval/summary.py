"""Summaries of segmentation results beyond the DAVIS table (numpy inputs only): the per-video spread of J&F,
foreground IoU, and, for videos with sparse masks only, each object's area after it is given."""

from __future__ import annotations

import numpy as np


def per_video_spread(rows: list[dict]) -> dict:
    """rows: evaluate_dataset's per-sequence rows (J-Mean, F-Mean in [0, 1]) -> {"per video": {name: J&F},
    "std": ..., "min": ...} in points."""
    jf = {r["Sequence"]: 50 * (r["J-Mean"] + r["F-Mean"]) for r in rows}
    return {"per video": jf, "std": float(np.std(list(jf.values()))), "min": min(jf.values())}


def foreground_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of all objects together: gt an id map (void 255 is not an object), pred a boolean foreground; 1 when
    both are empty."""
    fg = (gt > 0) & (gt != 255)
    union = (fg | pred).sum()
    return float((fg & pred).sum() / union) if union else 1.0


def object_areas(id_maps: list[np.ndarray], given: dict[int, tuple[int, int]]) -> dict:
    """id_maps: the predicted id map of every frame; given: object -> (frame it is given at, its given area).
    Returns {"areas": object -> area in every frame after it is given, "min": object -> smallest of those (its
    given area when none follow), "ratio1": object 1's area at the last frame / its given area}: whether each
    object is kept, and whether object 1 takes the others' pixels."""
    counts = [np.bincount(m.ravel(), minlength=256) for m in id_maps]
    areas = {k: [int(c[k]) for c in counts[t0 + 1:]] for k, (t0, _) in sorted(given.items())}
    return {"areas": areas, "min": {k: min(a) if a else given[k][1] for k, a in areas.items()},
            "ratio1": float(counts[-1][1]) / max(given.get(1, (0, 1))[1], 1)}
