"""Checkpoints, in one place: save (atomic), load (weights_only, clear errors), init_from, resume, load for
inference, and export (`python -m vos.checkpoint SRC.pt [SRC2.pt ...] DST.pt`).

A checkpoint is a dict with "model" (weights) and "config" (the training config as a plain dict, or at least
{"model": ...}); training checkpoints add "optimizer", "scheduler", "scaler", "step" and "rng".
A frozen backbone is left out of "model" and restored from its weights package when loaded. A checkpoint of
several models run together (`export(..., ensemble=True)`; see vos.inference.tracker) is
{"members": [{"model", "config", "source"}, ...]}: every member keeps its own training config.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from vos.config import ModelConfig, config_from_dict
from vos.model import HODOR
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


def _migrate_config(cfg: dict) -> dict:
    """Configs of older versions: validation's inference settings now live in val.infer; decoder.self_read (tried
    and removed on 2026-12-04, RESULTS.md) is dropped where it was off."""
    decoder = cfg.get("model", {}).get("decoder")
    if isinstance(decoder, dict) and decoder.get("self_read") is False:
        cfg = {**cfg, "model": {**cfg["model"], "decoder": {k: v for k, v in decoder.items() if k != "self_read"}}}
    val = cfg.get("val")
    if isinstance(val, dict) and any(k in val for k in ("window", "anchor_first", "short_side")):
        val = dict(val)
        val["infer"] = {k: val.pop(k) for k in ("window", "anchor_first", "short_side") if k in val}
        cfg = {**cfg, "val": val}
    return cfg


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dict (see the module's docstring), loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:120]}); "
                              "use an earlier checkpoint or start a new run") from None
    if isinstance(state, dict) and "ensemble" in state:  # the format of 2026-12-01: members' weights by prefix
        state = {"members": [{"model": {k.split(".", 2)[2]: v for k, v in state["model"].items()
                                        if k.startswith(f"members.{i}.")}, "config": state["config"], "source": src}
                             for i, src in enumerate(state["ensemble"])]}
    parts = state.get("members", [state]) if isinstance(state, dict) else [None]
    if not parts or not all(isinstance(m, dict) and "model" in m and "config" in m for m in parts):
        raise CheckpointError(f"{path} is not a vos checkpoint (it needs 'model' and 'config' entries, or "
                              "'members' holding them)")
    for m in parts:
        m["model"], m["config"] = _migrate(m["model"]), _migrate_config(m["config"])
    return state


def members(state: dict) -> list[dict]:
    """The models of a checkpoint: [{"model", "config"}], one entry unless several models run together."""
    return state.get("members", [state])


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


def model_weights(model: HODOR) -> dict:
    """The weights a checkpoint keeps: everything but a frozen backbone (it comes from its package again)."""
    skip = "backbone." if model.cfg.freeze_backbone else "\0"
    return {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}


def _has_backbone(weights: dict) -> bool:
    return any(re.match(BACKBONE, k) and k.endswith(".weight") for k in weights)


def init_from(model: HODOR, path: str | Path) -> None:
    """Start a run from another checkpoint's weights; "FILE.pt#K": member K of a checkpoint of several models.
    A frozen backbone may be absent from it; a different decoder.pixel_block starts fresh (only that block), and so
    do a short-term path (or its given-frame read), a decoder anchor check, a stride-2 refinement and an FPN lateral8 the
    source lacks (all start as no-ops: vos.model.short_term, vos.model.hodor.AnchorCheck, vos.model.hodor.Refine,
    vos.model.hodor.FPN). A finer model.bg_grid starts each cell from the query of its place (`_finer_bg_grid`)."""
    path, _, member = str(path).partition("#")
    state = load_checkpoint(path)
    if "members" in state:
        parts = state["members"]
        if not member.isdigit() or int(member) >= len(parts):
            raise CheckpointError(f"init_from {path}: a checkpoint of {len(parts)} models; start from one of them with "
                                  f"{path}#K, K in 0..{len(parts) - 1} "
                                  f"({', '.join(str(m.get('source', i)) for i, m in enumerate(parts))})")
        state = parts[int(member)]
    elif member:
        raise CheckpointError(f"init_from {path}#{member}: {path} holds one model; drop '#{member}'")
    theirs = state["config"].get("model", {})
    theirs_decoder, theirs_st = theirs.get("decoder", {}), theirs.get("short_term", {})
    block = r"decoder\.\d+\.block\." if theirs_decoder.get("pixel_block") != model.cfg.decoder.pixel_block else NOTHING
    # modules a source without the option lacks, and that start fresh (as no-ops) here
    fresh = block + "".join(f"|{modules}" for options, key, modules in (
        (theirs_decoder, "anchor_check", r"anchor_check\."), (theirs_decoder, "presence", r"presence\."),
        (theirs_decoder, "refine", r"refine\."), (theirs, "lateral8", r"fpn\.lateral8\."),
        (theirs_st, "radius", r"short_term\."), (theirs_st, "given_topk", r"short_term\.given_in\."),
        (theirs_st, "given_ridge", r"short_term\.ridge_in\."), (theirs_st, "distance", r"short_term\.distance_in\."),
        (theirs_st, "read_prior", r"short_term\.read_gain"),
    ) if not options.get(key))
    weights = _more_mask_keys(state["model"], theirs_decoder.get("mask_keys", 1), model.cfg.decoder.mask_keys)
    weights = _finer_bg_grid(weights, theirs.get("bg_grid", 3), model.cfg.bg_grid)
    load_weights(model, weights, f"init_from {path}: model does not match this config",
                 may_miss=rf"{BACKBONE}|{fresh}", may_add=block)


def _more_mask_keys(weights: dict, theirs: int, ours: int, noise: float = 0.05) -> dict:
    """A checkpoint read out with `theirs` mask keys per descriptor (decoder.mask_keys) -> `ours` (a multiple):
    each key repeated, plus Gaussian noise of `noise` x the weights' std so that the copies can come apart in
    training (the max over exact copies would pass them equal gradients forever). The model starts as it was, but
    for the max over near copies."""
    if theirs == ours:
        return weights
    if ours % theirs:
        raise CheckpointError(f"init_from: decoder.mask_keys {ours} is not a multiple of the checkpoint's {theirs}")
    weights = dict(weights)
    for name in ("desc_proj.2.weight", "desc_proj.2.bias"):
        w = weights[name].float()
        w = w.unflatten(0, (theirs, -1)).repeat_interleave(ours // theirs, 0).flatten(0, 1)
        weights[name] = w + noise * w.std() * torch.randn_like(w)
    return weights


def _finer_bg_grid(weights: dict, theirs: int, ours: int) -> dict:
    """A checkpoint with a `theirs` x `theirs` background grid (model.bg_grid) -> `ours` x `ours`: the per-cell
    queries resized bilinearly over the grid (corners kept), so that a cell starts with the query of the place it
    covers. The background descriptors' weights are shared by all cells: nothing else changes."""
    if theirs == ours:
        return weights
    q = weights["bg_query"].float()  # (theirs^2, C), row-major cells
    grid = q.T.reshape(1, -1, theirs, theirs)
    resized = F.interpolate(grid, size=(ours, ours), mode="bilinear", align_corners=True) if theirs > 1 \
        else grid.expand(-1, -1, ours, ours)
    return {**weights, "bg_query": resized[0].flatten(1).T.contiguous().to(weights["bg_query"].dtype)}


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


def load_models(path: str | Path, device: torch.device, fuse: bool = True) -> list[HODOR]:
    """The HODOR model(s) of a checkpoint, for inference: one, or several that run together (each member built
    from its own model config; BatchNorm folded into the convolutions unless fuse=False)."""
    return [_build(path, part, device, fuse) for part in members(load_checkpoint(path))]


def _build(path, part: dict, device: torch.device, fuse: bool) -> HODOR:
    try:
        mcfg = config_from_dict(ModelConfig, part["config"]["model"])
    except (KeyError, VosError) as e:
        raise CheckpointError(f"{path}: no usable model config inside ({e})") from None
    has_backbone = _has_backbone(part["model"])
    if has_backbone or not mcfg.freeze_backbone:
        mcfg.backbone_weights = None  # the checkpoint holds all weights
    elif mcfg.backbone_weights is None:
        raise CheckpointError(f"{path} has no backbone weights and names no source for them")
    model = HODOR(mcfg)
    load_weights(model, part["model"], f"{path} does not fit the model it describes; is it a vos checkpoint "
                 "of this version?", may_miss=NOTHING if has_backbone else BACKBONE)
    model = model.to(device).eval()
    return model.fuse_for_inference() if fuse else model


def _half(weights: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}


def export(srcs: list[str], dst: str, ensemble: bool = False) -> None:
    """Keep the weights (fp16 storage: the loader casts back to fp32) and the config; drop the optimizer,
    scheduler and RNG states. Several sources of one architecture are averaged weight by weight (a "model soup";
    it helps when the runs started from the same initialisation; the first source's config is kept), or with
    `ensemble` kept side by side, each with its own config, as models that run together (their predictions
    are averaged at every frame: vos.inference.tracker)."""
    states = [load_checkpoint(s) for s in srcs]
    for src, state in zip(srcs, states):
        if "members" in state:
            raise VosError(f"{src} already holds several models; export from their own checkpoints")
    if ensemble:
        if len(srcs) < 2:
            raise VosError("an ensemble needs at least two source checkpoints")
        save_checkpoint(dst, {"members": [{"model": _half(s["model"]), "config": s["config"], "source": str(src)}
                                          for src, s in zip(srcs, states)]})
        return
    first = states[0]["model"]
    for src, state in zip(srcs[1:], states[1:]):
        if state["model"].keys() != first.keys() or any(state["model"][k].shape != v.shape for k, v in first.items()):
            raise VosError(f"cannot average {srcs[0]} and {src}: the architectures differ")
    weights = {}
    for k, v in first.items():
        if v.is_floating_point():
            weights[k] = torch.stack([s["model"][k].float() for s in states]).mean(0)
        else:  # integer buffers (e.g. BatchNorm's counter): keep the first
            weights[k] = v
    save_checkpoint(dst, {"model": _half(weights), "config": states[0]["config"], "step": states[0].get("step"),
                          "sources": list(srcs)})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m vos.checkpoint", description="export a shippable model: one "
                                 "checkpoint, a weight average of several, or (--ensemble) several models that run together")
    ap.add_argument("src", nargs="+", help="source checkpoints")
    ap.add_argument("dst", help="the exported checkpoint")
    ap.add_argument("--ensemble", action="store_true", help="keep the sources side by side, each with its own config")
    args = ap.parse_args()
    try:
        export(args.src, args.dst, args.ensemble)
    except VosError as e:
        ap.exit(1, f"error: {e}\n")
