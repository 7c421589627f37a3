"""The training loop: one readable Trainer in the style of torchvision's reference trainers.

AdamW + warmup then cosine/step decay, gradient clipping and accumulation, AMP on CUDA, torchrun/DDP,
atomic checkpoints (every N steps and on SIGTERM/SIGINT) with exact resume, a non-finite guard over every
micro-batch, wandb logging (offline by default) and periodic validation J&F.
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

from vos.checkpoint import init_from, load_checkpoint, restore_training, save_checkpoint, training_state
from vos.config import TrainConfig, Trainable, config_from_dict, save_config, to_dict
from vos.data.clips import ClipDataset, MixtureSampler
from vos.model import HODOR, probs_to_labels
from vos.train.cycles import CycleModel
from vos.utils import VosError
from vos.utils.device import amp_dtype, pick_device


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


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT to the main process. A signal sent to the whole process group
    (Ctrl-C, a cluster's pre-emption, `pkill -f train.py`) would otherwise kill the workers first, and the main
    process would die of "DataLoader worker killed" instead of checkpointing; the workers exit with their parent."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def _overlay_images(batch: dict, outputs: dict, n: int = 2) -> list:
    import wandb

    name = next(k for k in outputs if k != "per_object")
    lg = outputs[name]
    pred = probs_to_labels(lg)
    target = int(name.rsplit(">", 1)[1]) if ">" in name else 0
    images = []
    for b in range(min(n, lg.shape[0])):
        img = (batch["images"][b, target].permute(1, 2, 0).cpu().numpy() * 255).astype("uint8")
        gt = batch["masks"][b, target]
        gt_lab = torch.where(gt.sum(0) > 0, probs_to_labels(gt, 0) + 1, 0).cpu().numpy()
        images.append(wandb.Image(img, caption=name, masks={"prediction": {"mask_data": pred[b].cpu().numpy()},
                                                            "ground_truth": {"mask_data": gt_lab}}))
    return images


class Trainer:
    """Fields: cfg, device, rank/world (torchrun), model (HODOR), cycle (the loss module, DDP-wrapped when
    distributed), opt/sched/scaler, step (optimizer steps done), accum (micro-batches per step), skipped (steps
    skipped for non-finite values), out_dir."""

    def __init__(self, cfg: DictConfig, resume: str | None = None, model: HODOR | None = None):
        """model: train this existing model (test-time adaptation: vos.adapt) instead of building one from
        cfg.model; it is trained in this process alone (no torchrun), and no checkpoint is saved unless fit() runs."""
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.rank, self.world = _init_distributed(self.device) if model is None else (0, 1)
        self.out_dir = Path(cfg.out_dir)
        state = None
        if resume:
            state = load_checkpoint(resume)
            if to_dict(config_from_dict(TrainConfig, state["config"]).model) != to_dict(cfg.model):
                raise VosError(f"--resume {resume}: the checkpoint's model config differs from this run's")
        torch.manual_seed(cfg.seed + self.rank)
        if model is None:
            model = HODOR(cfg.model)
            if cfg.init_from and state is None:
                init_from(model, cfg.init_from)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        groups = self.model.param_groups()
        for name in Trainable(cfg.optim.train).frozen():
            for p in groups[name]:
                p.requires_grad_(False)
        self.cycle = CycleModel(self.model, hard_ramp=cfg.optim.steps // 2, **to_dict(cfg.cycles)).to(self.device)
        if self.world > 1:
            self.cycle = torch.nn.parallel.DistributedDataParallel(
                self.cycle, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # the modules that start as no-ops train at their own peak lr
        new = (self.model.short_term, self.model.anchor_check, self.model.presence, self.model.refine,
               self.model.fpn.lateral8)
        fresh = {id(p) for m in new if m is not None for p in m.parameters()}
        if cfg.model.decoder.mask_keys > 1:  # and several mask keys, near copies at the start, that must come apart
            fresh |= {id(p) for p in self.model.desc_proj[-1].parameters()}
        groups = [{"params": [p for p in self.params if id(p) not in fresh]},
                  {"params": [p for p in self.params if id(p) in fresh], "lr": cfg.optim.short_term_lr or cfg.optim.lr}]
        # fused: one kernel for all parameters (on 2 CPU cores 4x faster than the per-parameter loop, ~4 % of an
        # adaptation step); same update
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.optim.lr,
                                     weight_decay=cfg.optim.weight_decay, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.amp_dtype = amp_dtype(self.device, cfg.optim.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        if state is not None:
            self.step = restore_training(state, self.model, self.opt, self.sched, self.scaler, self.device)
        o = cfg.optim
        self.accum = max(1, o.effective_batch // (o.batch_size * self.world)) if o.effective_batch else 1
        self.skipped = self.bad_in_row = 0
        self.run = None
        self.data_seconds = 0.0  # time the loop waited for the DataLoader (this invocation)
        self.first_step_done: float | None = None  # perf_counter() when this invocation's first step ended

    # --------------------------------------------------------------------------------------------- parts
    def loader(self) -> torch.utils.data.DataLoader:
        c = self.cfg
        dataset = ClipDataset(c.data.sources, c.data.size, c.data.max_objects, c.data.root, c.data.clip_len,
                              tuple(c.data.zoom))
        sampler = MixtureSampler(dataset, c.optim.batch_size, c.seed, self.rank, self.step * self.accum,
                                 c.optim.steps * self.accum, c.data.long_clip_share, c.data.long_clip_len)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=c.data.workers,
                                           pin_memory=self.device.type == "cuda", worker_init_fn=_ignore_stop_signals)

    def _timed(self, batches):
        """The loader's batches, adding the time spent waiting for each to data_seconds."""
        it = iter(batches)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.data_seconds += time.perf_counter() - t
            yield batch

    def train_step(self, micro_batches: list[dict]) -> dict | None:
        """One optimizer step over `accum` micro-batches. Every micro-batch's loss is checked: if any is non-finite
        (or the gradient norm is), the whole step is skipped. Returns the step's logs (mean loss over the
        micro-batches), or None when skipped."""
        self.model.train()
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        total = torch.zeros((), device=self.device)
        parts_sum: dict[str, torch.Tensor] = {}
        for batch in micro_batches:
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                                enabled=self.amp_dtype is not None):
                loss, parts, outputs = self.cycle(batch, self.step)
            finite &= torch.isfinite(loss)
            self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.detach()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0) + v.detach()
        self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.clip_grad)
        ok = finite & torch.isfinite(gnorm)
        if self.world > 1:  # every rank skips, or none does
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        ok = bool(ok)  # the step's one host sync: needed to decide whether to skip
        if ok:
            self.scaler.step(self.opt)
        self.scaler.update()  # fp16: lowers the loss scale after an overflow
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.step += 1
        if not ok:
            self.skipped, self.bad_in_row = self.skipped + 1, self.bad_in_row + 1
            warnings.warn(f"step {self.step}: non-finite loss or gradient, step skipped ({self.bad_in_row} in a row, "
                          f"{self.skipped} total)")
            if self.bad_in_row >= self.cfg.optim.max_nonfinite:
                raise VosError(f"{self.bad_in_row} non-finite steps in a row: stopping (lower optim.lr?)")
            return None
        self.bad_in_row = 0
        n = len(micro_batches)
        return {"loss": total / n, "grad_norm": gnorm, "outputs": outputs,
                **{f"loss/{k}": v / n for k, v in parts_sum.items()}}

    def log(self, logs: dict, batch: dict, clips_per_s: float, bar: tqdm) -> None:
        outputs = logs.pop("outputs")
        logs = {k: float(v) for k, v in logs.items()}
        if "per_object" in outputs:  # per object slot: IoU and Dice loss (collapse onto one id shows here)
            iou, dice, count = outputs["per_object"].tolist()
            for k, n in enumerate(count):
                if n:
                    logs[f"iou/object{k + 1}"], logs[f"dice/object{k + 1}"] = iou[k] / n, dice[k] / n
        logs.update(lr=self.sched.get_last_lr()[0], clips_per_s=clips_per_s, skipped_steps=self.skipped,
                    data_wait_s=self.data_seconds)
        bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs['lr']:.2e}")
        if self.run is not None:
            if self.cfg.log.image_every and self.step % self.cfg.log.image_every == 0:
                logs["overlays"] = _overlay_images(batch, outputs)
            self.run.log(logs, step=self.step)

    def validate(self) -> dict[str, float]:
        from vos.train.validate import validate

        score = validate(self.model, self.cfg, self.device)
        if self.run is not None:
            self.run.log({f"val/{k}": v for k, v in score.items()}, step=self.step)
        return score

    def save(self) -> Path:
        path = self.out_dir / "checkpoint.pt"
        if self.rank == 0:
            save_checkpoint(path, training_state(self.model, self.opt, self.sched, self.scaler, self.step,
                                                 to_dict(self.cfg)))
        return path

    def _wandb(self):
        mode = os.environ.get("WANDB_MODE", self.cfg.log.wandb)
        if self.rank != 0 or mode == "disabled":
            return None
        import wandb

        return wandb.init(project=self.cfg.log.project, dir=str(self.out_dir), mode=mode, config=to_dict(self.cfg),
                          name=self.out_dir.name, reinit=True)

    # ---------------------------------------------------------------------------------------------- loop
    def fit(self, stop_after: int | None = None) -> Path:
        """Train to optim.steps (or `stop_after` more steps); returns the last checkpoint's path."""
        c, start = self.cfg, self.step
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.out_dir / "config.yaml")
        self.run = self._wandb()
        stop = _StopFlag()
        bar = tqdm(total=c.optim.steps, initial=start, disable=self.rank != 0, desc="train", dynamic_ncols=True)
        final, t0, seen, micro = self.out_dir / "checkpoint.pt", time.time(), 0, []
        try:
            for batch in self._timed(self.loader()):
                micro.append({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
                if len(micro) < self.accum:
                    continue
                logs = self.train_step(micro)
                seen += sum(b["images"].shape[0] for b in micro) * self.world
                micro = []
                bar.update(1)
                self.first_step_done = self.first_step_done or time.perf_counter()
                if logs is not None and self.rank == 0 and self.step % c.log.every == 0:
                    self.log(logs, batch, seen / max(1e-9, time.time() - t0), bar)
                if c.val.every and self.step % c.val.every == 0 and self.rank == 0:
                    self.validate()
                stop_now = stop.stop or (stop_after is not None and self.step - start >= stop_after)
                if self.world > 1:
                    flag = torch.tensor([float(stop_now)], device=self.device)
                    dist.all_reduce(flag)
                    stop_now = bool(flag.item())
                if self.step % c.ckpt_every == 0 or stop_now or self.step >= c.optim.steps:
                    final = self.save()
                if stop_now:
                    if self.rank == 0:
                        print(f"stopped at step {self.step}; continue with --resume {final}")
                    break
            if self.world > 1:  # report a weight checksum per rank: DDP keeps the replicas identical
                checksum = sum(float(p.double().sum()) for p in self.model.parameters())
                print(f"rank {self.rank} weights checksum {checksum:.10e}")
        finally:
            stop.restore()
            bar.close()
            if self.run is not None:
                self.run.finish()
        return final


def train(cfg: DictConfig, resume: str | None = None, stop_after: int | None = None) -> Path:
    """Run (or resume) training; returns the path of the last checkpoint. stop_after: checkpoint and stop after
    this many steps in this invocation (for runs split over sittings); `resume` then continues exactly."""
    return Trainer(cfg, resume).fit(stop_after)
