"""The training loop: one readable loop in the style of torchvision's reference trainers.

AdamW + warmup then cosine/step decay, gradient clipping and accumulation, AMP on CUDA, torchrun/DDP,
atomic checkpoints (every N steps and on SIGTERM/SIGINT) with exact resume, non-finite-loss guard,
wandb logging (offline by default) and periodic validation J&F.
"""

from __future__ import annotations

import math
import os
import signal
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from tqdm import tqdm

from vos.config import TrainConfig, config_from_dict, save_config, to_dict
from vos.data.clips import ClipDataset, MixtureSampler
from vos.model import HODOR
from vos.train.cycles import CycleModel
from vos.utils import VosError
from vos.utils.checkpoint import load_checkpoint, load_weights, save_checkpoint


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
            torch.device("cpu")
    return torch.device(name)


def lr_factor(step: int, cfg) -> float:
    o = cfg.optim
    if step < o.warmup:
        return (step + 1) / o.warmup
    if o.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))))
    if o.schedule == "step":
        return o.step_gamma ** sum(step >= m for m in o.step_milestones)
    return 1.0


def _init_distributed(device: torch.device) -> tuple[int, int]:
    if "RANK" not in os.environ or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


class _StopFlag:
    """Turns SIGTERM/SIGINT into a request to checkpoint and stop at the end of the current step."""

    def __init__(self):
        self.stop = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        self.stop = True

    def restore(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _wandb_run(cfg: DictConfig, out_dir: Path, rank: int):
    mode = os.environ.get("WANDB_MODE", cfg.log.wandb)
    if rank != 0 or mode == "disabled":
        return None
    import wandb

    return wandb.init(project=cfg.log.project, dir=str(out_dir), mode=mode, config=to_dict(cfg),
                      name=out_dir.name, reinit=True)


def _overlay_images(batch: dict, outputs: dict, num_bg: int, n: int = 2):
    import wandb

    from vos.model import merged_logits

    name = next(iter(outputs))
    lg = outputs[name]
    pred = merged_logits(lg, num_bg).argmax(1)
    target = name.rsplit(">", 1)[1] if ">" in name else "0"
    images = []
    for b in range(min(n, lg.shape[0])):
        img = (batch["images"][b, int(target)].permute(1, 2, 0).cpu().numpy() * 255).astype("uint8")
        gt = batch["masks"][b, int(target)]
        gt_lab = torch.where(gt.sum(0) > 0, gt.argmax(0) + 1, 0).cpu().numpy()
        images.append(wandb.Image(img, caption=name, masks={"prediction": {"mask_data": pred[b].cpu().numpy()},
                                                            "ground_truth": {"mask_data": gt_lab}}))
    return images


def train(cfg: DictConfig, resume: str | None = None, stop_after: int | None = None) -> Path:
    """Run (or resume) training; returns the path of the last checkpoint.

    stop_after: checkpoint and stop after this many steps in this invocation (for runs split over sittings);
    `resume` then continues exactly where it stopped.
    """
    device = pick_device(cfg.device)
    rank, world = _init_distributed(device)
    out_dir = Path(cfg.out_dir)
    start_step, state = 0, None
    if resume:
        state = load_checkpoint(resume)
        saved = config_from_dict(TrainConfig, state["config"])
        if to_dict(saved.model) != to_dict(cfg.model):
            raise VosError(f"--resume {resume}: the checkpoint's model config differs from this run's")
        start_step = int(state["step"])
    torch.manual_seed(cfg.seed + rank)
    model = HODOR(cfg.model).to(device)
    if cfg.init_from and state is None:
        init = load_checkpoint(cfg.init_from)
        # The frozen backbone may be omitted from a checkpoint; a different decoder.pixel_block starts fresh.
        swapped = init["config"].get("model", {}).get("decoder", {}).get("pixel_block") != cfg.model.decoder.pixel_block
        block = r"decoder\.\d+\.block\." if swapped else r"$^"
        load_weights(model, init["model"], f"init_from {cfg.init_from}: model does not match this config",
                     may_miss=rf"backbone\.|{block}", may_add=block)
    cycle = CycleModel(model, cfg.cycles.detach_masks, cfg.cycles.long_cycles).to(device)
    if world > 1:
        cycle = torch.nn.parallel.DistributedDataParallel(cycle, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    amp_dtype = None
    if cfg.optim.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])

    accum = max(1, cfg.optim.effective_batch // (cfg.optim.batch_size * world)) if cfg.optim.effective_batch else 1
    dataset = ClipDataset(cfg.data.sources, cfg.data.size, cfg.data.max_objects)
    sampler = MixtureSampler(dataset, cfg.optim.batch_size, cfg.seed, rank, start_step * accum, cfg.optim.steps * accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=False)

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    run = _wandb_run(cfg, out_dir, rank)
    stop = _StopFlag()

    def checkpoint(step: int) -> Path:
        path = out_dir / "checkpoint.pt"
        if rank == 0:
            frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
            save_checkpoint(path, {
                "model": {k: v for k, v in model.state_dict().items() if k not in frozen},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "config": to_dict(cfg),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
            })
        return path

    step, micro, bad_in_row, skipped = start_step, 0, 0, 0
    t0, seen = time.time(), 0
    bar = tqdm(total=cfg.optim.steps, initial=start_step, disable=rank != 0, desc="train", dynamic_ncols=True)
    model.train()
    final = out_dir / "checkpoint.pt"
    try:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                loss, parts, outputs = cycle(batch, step)
            # One host sync per step: needed to decide whether to skip the step.
            finite = bool(torch.isfinite(loss))
            if finite:
                scaler.scale(loss / accum).backward()
            micro += 1
            if micro % accum:
                continue
            if not finite:
                opt.zero_grad(set_to_none=True)
                bad_in_row, skipped = bad_in_row + 1, skipped + 1
                warnings.warn(f"step {step}: non-finite loss, step skipped ({bad_in_row} in a row, {skipped} total)")
                if bad_in_row >= cfg.optim.max_nonfinite:
                    raise VosError(f"{bad_in_row} non-finite losses in a row: stopping (lower optim.lr?)")
                step += 1
                sched.step()
                continue
            bad_in_row = 0
            scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            seen += batch["images"].shape[0] * accum * world
            bar.update(1)
            if rank == 0 and step % cfg.log.every == 0:
                rate = seen / max(1e-9, time.time() - t0)
                logs = {"loss": loss.item(), "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm),
                        "clips_per_s": rate, "skipped_steps": skipped,
                        **{f"loss/{k}": v.item() for k, v in parts.items()}}
                bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs['lr']:.2e}")
                if run is not None:
                    if cfg.log.image_every and step % cfg.log.image_every == 0:
                        logs["overlays"] = _overlay_images(batch, outputs, model.num_bg)
                    run.log(logs, step=step)
            if cfg.log.val_every and step % cfg.log.val_every == 0 and rank == 0:
                from vos.train.validate import validate

                score = validate(model, cfg, device)
                if run is not None:
                    run.log({f"val/{k}": v for k, v in score.items()}, step=step)
                model.train()
            stop_now = stop.stop or (stop_after is not None and step - start_step >= stop_after)
            if world > 1:
                flag = torch.tensor([float(stop_now)], device=device)
                dist.all_reduce(flag)
                stop_now = bool(flag.item())
            if step % cfg.ckpt_every == 0 or stop_now or step >= cfg.optim.steps:
                final = checkpoint(step)
            if stop_now:
                if rank == 0:
                    print(f"stopped at step {step}; continue with --resume {final}")
                break
        if world > 1:  # report a weight checksum per rank: DDP keeps the replicas identical
            checksum = sum(float(p.double().sum()) for p in model.parameters())
            print(f"rank {rank} weights checksum {checksum:.10e}")
    finally:
        stop.restore()
        bar.close()
        if run is not None:
            run.finish()
    return final
