"""Validation J&F during training: propagate the held-out split with the current weights, then evaluate."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from vos.config import data_path
from vos.data import list_sequences
from vos.eval import evaluate_dataset
from vos.inference.run import Job, Runner


def validate(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> dict[str, float]:
    """J&F of `model` on cfg.val's split, run as infer.py runs it with cfg.val.infer (no adaptation). Leaves the
    model in eval mode."""
    v = cfg.val
    root = data_path(cfg.data.root, v.root)
    infer_cfg = v.infer.copy()
    infer_cfg.device = str(device)
    runner = Runner(infer_cfg, "hodor", models=[model])
    seqs = list_sequences(root, v.layout, v.split)
    if v.max_seqs:
        seqs = seqs[: v.max_seqs]
    with tempfile.TemporaryDirectory() as tmp:
        for s in seqs:
            first = min(s.annotations)
            runner.run(Job(s.name, s.frame_dir, {s.frame_names[first]: s.annotations[first]},
                           binary_255=s.layout == "davis2016"), Path(tmp), progress=False)
        table, _ = evaluate_dataset(root, v.layout, v.split, tmp, workers=1, sequences=[s.name for s in seqs])
    return table
