"""Checkpoints, in one place: save (atomic), load (weights_only, clear errors), init_from, resume, load for
inference, and export (`python -m vos.checkpoint SRC.pt [SRC2.pt ...] DST.pt`).

A checkpoint is a dict with "model" (weights) and "config" (the training config as a plain dict, or at least
{"model": ...}); training checkpoints add "optimizer", "scheduler", "scaler", "step" and "rng".
A frozen backbone is left out of "model" and restored from its weights package when loaded. An ensemble
checkpoint (`export(..., ensemble=True)`) keeps each member's weights under "members.<i>." and lists its sources
in "ensemble"; it loads as a `vos.model.Ensemble`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from vos.config import ModelConfig, config_from_dict
from vos.model import HODOR, Ensemble
from vos.utils import VosError, atomic_path

BACKBONE = r"backbone\."
NOTHING = r"$^"


class CheckpointError(VosError):
    pass


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _migrate(weights: dict) -> dict:
    """Keys of older versions: the decoder's background key/value projections now live in its attention."""
    return {re.sub(r"^(decoder\.\d+\.)(k_bg|v_bg)\.", r"\1attn.\2.", k): v for k, v in weights.items()}


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
    state["model"] = _migrate(state["model"])
    return state


def load_weights(model: torch.nn.Module, weights: dict, what: str, may_miss: str = NOTHING,
                 may_add: str = NOTHING) -> None:
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


def model_weights(model: torch.nn.Module) -> dict:
    """The weights a checkpoint keeps: everything but frozen parameters (the frozen backbone comes from its
    package again)."""
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def _has_backbone(weights: dict) -> bool:
    """Whether the weights (of a model, or of an ensemble's members) include the backbone's."""
    return any(re.match(rf"(members\.\d+\.)?{BACKBONE}", k) and k.endswith(".weight") for k in weights)


def init_from(model: HODOR, path: str | Path) -> None:
    """Start a run from another checkpoint's weights. A frozen backbone may be absent from it; a different
    decoder.pixel_block starts fresh (only that block)."""
    state = load_checkpoint(path)
    if state.get("ensemble"):
        raise CheckpointError(f"init_from {path}: an ensemble checkpoint; start from one of its members "
                              f"({', '.join(state['ensemble'])})")
    theirs = state["config"].get("model", {}).get("decoder", {}).get("pixel_block")
    block = r"decoder\.\d+\.block\." if theirs != model.cfg.decoder.pixel_block else NOTHING
    load_weights(model, state["model"], f"init_from {path}: model does not match this config",
                 may_miss=rf"{BACKBONE}|{block}", may_add=block)


def training_state(model, optimizer, scheduler, scaler, step: int, cfg: dict) -> dict:
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    return {"model": model_weights(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "config": cfg, "rng": rng}


def restore_training(state: dict, model, optimizer, scheduler, scaler, device: torch.device) -> int:
    """Put a training checkpoint back into its parts; returns the step to continue from."""
    load_weights(model, state["model"], "--resume: the checkpoint does not fit this model", may_miss=BACKBONE)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return int(state["step"])


def load_model(path: str | Path, device: torch.device, fuse: bool = True) -> HODOR | Ensemble:
    """A HODOR model (or an Ensemble of them) for inference from a checkpoint that carries its own model config
    (BatchNorm folded into the convolutions unless fuse=False)."""
    state = load_checkpoint(path)
    try:
        mcfg = config_from_dict(ModelConfig, state["config"]["model"])
    except (KeyError, VosError) as e:
        raise CheckpointError(f"{path}: no usable model config inside ({e})") from None
    n = len(state.get("ensemble") or [])
    has_backbone = _has_backbone(state["model"])
    if has_backbone or not mcfg.freeze_backbone:
        mcfg.backbone_weights = None  # the checkpoint holds all weights
    elif mcfg.backbone_weights is None or n:
        raise CheckpointError(f"{path} has no backbone weights and names no source for them")
    model = Ensemble([HODOR(mcfg) for _ in range(n)]) if n else HODOR(mcfg)
    load_weights(model, state["model"], f"{path} does not fit the model it describes; is it a vos checkpoint "
                 "of this version?", may_miss=NOTHING if has_backbone else BACKBONE)
    model = model.to(device).eval()
    return model.fuse_for_inference() if fuse else model


def export(srcs: list[str], dst: str, ensemble: bool = False) -> None:
    """Keep the weights (fp16 storage: the loader casts back to fp32) and the first source's config; drop the
    optimizer, scheduler and RNG states. Several sources of one architecture are averaged weight by weight (a
    "model soup"; it helps when the runs started from the same initialisation), or with `ensemble` kept side by
    side as the members of an Ensemble (their predictions are averaged at every frame)."""
    states = [load_checkpoint(s) for s in srcs]
    first = states[0]["model"]
    for src, state in zip(srcs[1:], states[1:]):
        if state["model"].keys() != first.keys() or any(state["model"][k].shape != v.shape for k, v in first.items()):
            raise VosError(f"cannot {'ensemble' if ensemble else 'average'} {srcs[0]} and {src}: the architectures "
                           "differ")
    if ensemble:
        if len(srcs) < 2:
            raise VosError("an ensemble needs at least two source checkpoints")
        if not all(_has_backbone(s["model"]) for s in states):
            raise VosError("ensemble members must carry their backbone weights (trained with an unfrozen backbone)")
        weights = {f"members.{i}.{k}": v.half() if v.is_floating_point() else v
                   for i, s in enumerate(states) for k, v in s["model"].items()}
        save_checkpoint(dst, {"model": weights, "config": states[0]["config"], "ensemble": list(srcs)})
        return
    weights = {}
    for k, v in first.items():
        if v.is_floating_point():
            weights[k] = torch.stack([s["model"][k].float() for s in states]).mean(0).half()
        else:  # integer buffers (e.g. BatchNorm's counter): keep the first
            weights[k] = v
    save_checkpoint(dst, {"model": weights, "config": states[0]["config"], "step": states[0].get("step"),
                          "sources": list(srcs)})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m vos.checkpoint", description="export a shippable model: one "
                                 "checkpoint, a weight average of several, or (--ensemble) an ensemble of several")
    ap.add_argument("src", nargs="+", help="source checkpoints")
    ap.add_argument("dst", help="the exported checkpoint")
    ap.add_argument("--ensemble", action="store_true", help="keep the sources as ensemble members")
    args = ap.parse_args()
    try:
        export(args.src, args.dst, args.ensemble)
    except VosError as e:
        ap.exit(1, f"error: {e}\n")
