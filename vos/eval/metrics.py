"""DAVIS region (J) and boundary (F) measures, numerically identical to the official DAVIS-2017 code.

Inputs are numpy boolean arrays; nothing here imports the rest of vos.
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: the (2r+1)^2 footprint of x^2 + y^2 <= r^2."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2).astype(np.uint8)


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """IoU over the last two axes; 1 where both are empty. Void pixels are ignored."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    return np.where(np.isclose(union, 0), 1.0, j)


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """A pixel is on the boundary if it differs from its right, lower or lower-right neighbour."""
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def f_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008) -> float:
    """Boundary F-measure of one frame with a tolerance of ceil(bound_th * image diagonal) pixels."""
    keep = np.ones(gt.shape, bool) if void is None else ~void.astype(bool)
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(gt.shape))
    pb, gb = boundary_map(pred.astype(bool) & keep), boundary_map(gt.astype(bool) & keep)
    se = disk(int(radius))
    p_dil = cv2.dilate(pb.astype(np.uint8), se)
    g_dil = cv2.dilate(gb.astype(np.uint8), se)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g > 0:
        precision, recall = 1.0, 0.0
    elif n_p > 0 and n_g == 0:
        precision, recall = 0.0, 1.0
    elif n_p == 0 and n_g == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float(np.sum(pb & (g_dil > 0))) / n_p
        recall = float(np.sum(gb & (p_dil > 0))) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def statistics(values: np.ndarray, bins: int = 4) -> tuple[float, float, float]:
    """(Mean, Recall (> 0.5), Decay) of one object's per-frame values, as the official code computes them,
    except that bin indices stay integers of full width (the official uint8 cast breaks > 255 frames)."""
    values = np.asarray(values, np.float64)
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    ids = (np.round(np.linspace(1, len(values), bins + 1) + 1e-10) - 1).astype(np.int64)
    chunks = [values[ids[i]: ids[i + 1] + 1] for i in range(bins)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bin: NaN decay, as the official code
        decay = float(np.nanmean(chunks[0]) - np.nanmean(chunks[-1]))
    return mean, recall, decay
