"""Checkpoints: written atomically, loaded with weights_only=True, corrupt files reported clearly."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from vos.utils import VosError, atomic_path


class CheckpointError(VosError):
    pass


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:120]}); "
                              "use an earlier checkpoint or start a new run") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a vos checkpoint (it needs 'model' and 'config' entries)")
    return state


def load_weights(model: torch.nn.Module, weights: dict, what: str, may_miss: str = r"$^", may_add: str = r"$^") -> None:
    """`model.load_state_dict` that lets only keys matching the regexes `may_miss` (absent from `weights`) and
    `may_add` (not in the model) differ; any other mismatch raises CheckpointError("{what} (...)")."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{what} ({' '.join(str(e).split()[:40])})") from None
    missing = [k for k in missing if not re.match(may_miss, k)]
    unexpected = [k for k in unexpected if not re.match(may_add, k)]
    if missing or unexpected:
        raise CheckpointError(f"{what} (missing {missing[:3]}, unexpected {unexpected[:3]})")
