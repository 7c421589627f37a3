"""The DAVIS semi-supervised protocol over whole sequences and splits.

Per object per frame J and F, first and last frames excluded, objects = ids 1..max of the first annotation
(as the official code), per-object Mean / Recall / Decay pooled over all objects of all videos,
J&F = (J-Mean + F-Mean) / 2.
"""

from __future__ import annotations

import csv
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vos.eval.metrics import f_measure, jaccard, statistics
from vos.utils import VosError, atomic_path


@dataclass
class SequenceResult:
    name: str
    objects: list[int]
    J: np.ndarray  # (objects, frames - 2)
    F: np.ndarray
    unknown_ids: list[int] = field(default_factory=list)  # predicted ids absent from the ground truth


def evaluate_masks(name: str, gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> SequenceResult:
    """gt, pred: (T, H, W) integer id maps of a whole sequence; void: (T, H, W) bool or None."""
    if gt.shape != pred.shape:
        raise VosError(f"{name}: predictions {pred.shape} do not match the ground truth {gt.shape}")
    n = int(gt[0].max())
    objects = list(range(1, n + 1))
    unknown = sorted(int(i) for i in np.unique(pred) if i > n)
    gt, pred = gt[1:-1], pred[1:-1]
    void = void[1:-1] if void is not None else None
    J = np.zeros((n, len(gt)))
    F = np.zeros((n, len(gt)))
    for k, obj in enumerate(objects):
        g, p = gt == obj, pred == obj
        J[k] = jaccard(g, p, void)
        F[k] = [f_measure(g[t], p[t], None if void is None else void[t]) for t in range(len(gt))]
    return SequenceResult(name, objects, J, F, unknown)


def _load_sequence(args) -> SequenceResult:
    from vos.data import read_mask

    seq, results_dir = args
    frames = seq.frame_names
    gt, void = [], []
    for t in range(len(frames)):
        if t not in seq.annotations:
            raise VosError(f"{seq.name}: no ground truth for frame {frames[t]} in {seq.mask_dir}")
        ids, _ = seq.read_mask(t)
        void.append(ids == 255 if seq.void_id == 255 else np.zeros(ids.shape, bool))
        gt.append(np.where(void[-1], 0, ids))
    pred = []
    for name in frames:
        p = Path(results_dir) / seq.name / f"{name}.png"
        if not p.is_file():
            raise VosError(f"missing prediction {p}: every frame of every sequence needs a mask PNG")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids, _ = read_mask(p, size=gt[0].shape)
        pred.append(ids)
    return evaluate_masks(seq.name, np.stack(gt), np.stack(pred), np.stack(void) if seq.void_id else None)


def summarize(results: list[SequenceResult]) -> dict[str, float]:
    rows = {"J": [], "F": []}
    for r in results:
        for k in range(len(r.objects)):
            rows["J"].append(statistics(r.J[k]))
            rows["F"].append(statistics(r.F[k]))
    out = {}
    for m in ("J", "F"):
        arr = np.array(rows[m])
        out[f"{m}-Mean"], out[f"{m}-Recall"], out[f"{m}-Decay"] = (float(np.mean(arr[:, i])) for i in range(3))
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    return {k: out[k] for k in ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")}


def per_object(results: list[SequenceResult]) -> list[dict]:
    rows = []
    for r in results:
        for k, obj in enumerate(r.objects):
            jm, jr, jd = statistics(r.J[k])
            fm, fr, fd = statistics(r.F[k])
            rows.append({"Sequence": f"{r.name}_{obj}", "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
                         "F-Mean": fm, "F-Recall": fr, "F-Decay": fd})
    return rows


def evaluate_dataset(root: str | Path, layout: str, split: str, results_dir: str | Path,
                     workers: int | None = None, sequences: list[str] | None = None) -> tuple[dict, list[dict]]:
    """Evaluate a results folder (<results>/<seq>/<frame>.png) on a DAVIS-layout split.

    Returns (global table, per-object rows). Sequences are evaluated in parallel processes.
    """
    from vos.data import list_sequences

    seqs = list_sequences(root, layout, split)
    if sequences:
        seqs = [s for s in seqs if s.name in sequences]
    if not seqs:
        raise VosError(f"no sequences to evaluate in {root} split {split}")
    workers = workers or min(len(seqs), os.cpu_count() or 1)
    jobs = [(s, results_dir) for s in seqs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_load_sequence, jobs))
    else:
        results = [_load_sequence(j) for j in jobs]
    for r in results:
        if r.unknown_ids:
            warnings.warn(f"{r.name}: predicted object id(s) {r.unknown_ids} are not in the ground truth; ignored")
    return summarize(results), per_object(results)


def write_csvs(out_dir: str | Path, table: dict, rows: list[dict]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (("global_results.csv", [table]), ("per-sequence_results.csv", rows)):
        with atomic_path(out_dir / name) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows([{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in d.items()} for d in data])


def format_table(table: dict) -> str:
    keys = list(table)
    return " | ".join(f"{k:>9}" for k in keys) + "\n" + " | ".join(f"{100 * table[k]:9.1f}" for k in keys)
