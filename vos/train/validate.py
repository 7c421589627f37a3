"""Validation J&F during training: propagate the held-out split with the current weights, then evaluate."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from vos.config import InferConfig, load_config
from vos.data import list_sequences
from vos.eval import evaluate_dataset
from vos.inference.run import Job, Runner


def validate(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> dict[str, float]:
    infer_cfg = load_config(InferConfig, None, [f"device={device}"])
    runner = Runner(infer_cfg, "hodor", model=model)
    seqs = list_sequences(cfg.log.val_root, cfg.log.val_layout, cfg.log.val_split)
    if cfg.log.val_max_seqs:
        seqs = seqs[: cfg.log.val_max_seqs]
    with tempfile.TemporaryDirectory() as tmp:
        for s in seqs:
            first = min(s.annotations)
            runner.run(Job(s.name, s.frame_dir, {s.frame_names[first]: s.annotations[first]},
                           binary_255=s.layout == "davis2016"), Path(tmp), progress=False)
        table, _ = evaluate_dataset(cfg.log.val_root, cfg.log.val_layout, cfg.log.val_split, tmp, workers=1,
                                    sequences=[s.name for s in seqs])
    return table
