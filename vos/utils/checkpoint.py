"""Checkpoints: written atomically, loaded with weights_only=True, corrupt files reported clearly."""

from __future__ import annotations

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
