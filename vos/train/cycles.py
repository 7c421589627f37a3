"""HODOR's training cycles with a path cache, and the loss.

A node is the descriptors of one frame: "0" (encoded from the ground-truth mask of the annotated frame 0) or
a prediction (sources, target): frame `target` decoded from the descriptors of the `sources` nodes, then
re-encoded on that frame from its predicted soft masks. Nodes are cached, so every forward step is computed
once per iteration even when several cycles share it.

Cycles of 3-frame clips: [0]->0 and [0]->1->0 every iteration; with long cycles, odd iterations add either
[0]->1->2->1->0 or [0]->1, [0,1]->2, 2->1, [2,1]->0 (alternating).

Clips of T > 3 frames run as inference does (`chain_paths`): forward, each frame decoded from the given frame's and
the last WINDOW frames' descriptors, then backward from the last frame to frame 0 the same way (the cycle). Every
frame with a mask is supervised on both passes; frame 0 always is, at the end of the backward pass.

With `memory_noise` > 0, what a predicted frame leaves to memory (the soft masks its descriptors are re-encoded from,
and its short-term `last`) is corrupted now and then (`corrupt_masks`): a mask spilt onto a shifted copy of itself, or
cut by a line through it, as masks drift over a long video; the loss still wants the truth, so the step learns to
decode past a memory that took part of the scene or lost part of its object. With `memory_swap` > 0, an object's
memory also takes part of another object's mask now and then, as ids half-swap where paths cross. The given frame is
never corrupted.

The last source of a node is the frame processed just before its target: with the short-term path
(vos.model.short_term), its `StepOutput.last` is what the target reads, as the previous frame at inference (a node
decoding the frame of its last source, e.g. [0]->0, reads none: it would copy the masks). Its first source is the
given frame the path's global read sees (given_topk): frame 0 going forward, the turning frame coming back (never
frame 0's ground truth on the way back: the cycle's end would copy it), none when it is the target's own frame.

With `carry_dropout` > 0, each object of the `last` a node reads is withheld now and then (`withhold_carry`): the
path sees it as absent a frame ago, as when it has just come back into view, and only the given frame's read and the
descriptors can place it; the loss still wants it where it is.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vos.model import Features, StepOutput, probs_to_labels
from vos.model.short_term import LastFrame
from vos.utils import VosError

GT = "0"
WINDOW = 7  # at most this many recent frames a chain node reads (four-frame clips: 2-3; inference: InferConfig.window)
PRESENCE_WEIGHT = 0.5  # decoder.presence: weight of the presence loss beside each path's mask loss
WALK_TEMPERATURE = 0.07  # walk_loss: the softmax temperature of a step's cosine (CRW's)


def corrupt_masks(probs: torch.Tensor, chance: float, swap: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1 + I, h, w) probabilities -> the same with each object's mask corrupted with probability `chance`: half
    the time spilt (the mask, shifted by 15-50 % of the frame in a random direction and scaled by a in 0.3-1, joins
    it by max: the object's memory takes part of the scene), half the time cut (the side of a random line through
    its centroid scaled by 1 - a: it loses part of itself). Then, with probability `swap`, each object takes over
    part of another object of its clip (the side of a random line through the other's centroid, at strength 0.5-1),
    which loses it: ids half-swapped, as when two paths cross. Background is what the objects leave, renormalised
    where they add to more than 1. Differentiable in `probs`; no host-device sync."""
    B, K, h, w = probs.shape
    m = probs[:, 1:]
    I = K - 1
    dev, dt = probs.device, probs.dtype
    r = torch.rand(B, I, 6, device=dev, generator=generator, dtype=dt)
    hit, spill, a = r[..., 0] < chance, r[..., 1] < 0.5, 0.3 + 0.7 * r[..., 2]
    angle = r[..., 3] * (2 * math.pi)
    cos, sin = angle.cos(), angle.sin()
    shift = (0.15 + 0.35 * r[..., 4]) * 2  # affine_grid's coordinates span 2
    theta = torch.zeros(B * I, 2, 3, device=dev, dtype=dt)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = (shift * cos).flatten(), (shift * sin).flatten()
    grid = F.affine_grid(theta, [B * I, 1, h, w], align_corners=False)
    shifted = F.grid_sample(m.reshape(B * I, 1, h, w), grid, align_corners=False).view(B, I, h, w)
    a4 = a[..., None, None]
    spilt = torch.maximum(m, a4 * shifted)
    ys = torch.linspace(-1, 1, h, device=dev, dtype=dt)[:, None]
    xs = torch.linspace(-1, 1, w, device=dev, dtype=dt)[None]
    mass = m.detach().sum((-2, -1)).clamp(min=1e-6)
    cy = (m.detach() * ys).sum((-2, -1)) / mass
    cx = (m.detach() * xs).sum((-2, -1)) / mass

    def half_plane(cx, cy, cos, sin):  # (B, I, h, w): the side of the line through (cx, cy) whose normal is (cos, sin)
        return ((xs - cx[..., None, None]) * cos[..., None, None]
                + (ys - cy[..., None, None]) * sin[..., None, None]) > 0

    cut = m * (1 - a4 * half_plane(cx, cy, cos, sin).to(dt))
    m0 = m
    m = torch.where(hit[..., None, None], torch.where(spill[..., None, None], spilt, cut), m)
    if swap > 0 and I > 1:
        s = torch.rand(B, I, 4, device=dev, generator=generator, dtype=dt)
        partner = (torch.arange(I, device=dev) + 1 + (s[..., 0] * (I - 1)).long().clamp(max=I - 2)) % I  # never itself
        donor = m0.gather(1, partner[..., None, None].expand(-1, -1, h, w))
        angle = s[..., 1] * (2 * math.pi)
        side = half_plane(cx.gather(1, partner), cy.gather(1, partner), angle.cos(), angle.sin())
        strength = torch.where(s[..., 2] < swap, 0.5 + 0.5 * s[..., 3], torch.zeros_like(s[..., 3]))
        taken = strength[..., None, None] * side.to(dt) * donor  # (B, I, h, w): what object i takes of its partner
        lost = torch.zeros_like(m).scatter_add(1, partner[..., None, None].expand(-1, -1, h, w), taken)
        m = torch.maximum(m - lost, torch.zeros_like(m)) + taken
    total = m.sum(1, keepdim=True)
    out = torch.cat([(1 - total).clamp(min=0), m], 1)
    return out / out.sum(1, keepdim=True).clamp(min=1)


def withhold_carry(last: LastFrame, chance: float) -> LastFrame:
    """`last` with each object's mask zeroed with probability `chance` (background kept): to the short-term path that
    object was absent a frame ago. No host-device sync."""
    B, K = last.masks.shape[:2]
    keep = torch.rand(B, K, 1, 1, device=last.masks.device) >= chance
    keep[:, 0] = True
    return LastFrame(last.keys, last.masks * keep.to(last.masks.dtype))


def node_frames(node) -> set[int]:
    """Frames whose masks feed a node, along the whole path."""
    if node == GT:
        return {0}
    sources, target = node
    return {target}.union(*(node_frames(s) for s in sources))


def frame_of(node) -> int:
    return 0 if node == GT else node[1]


def sources_of(node) -> set:
    """Every node whose descriptors `node` needs, along the whole path."""
    if node == GT:
        return set()
    return set(node[0]).union(*(sources_of(s) for s in node[0]))


def cycle_paths(iteration: int, long_cycles: bool, clip_len: int = 3) -> list[tuple]:
    """The (sources, target) decodes whose predictions are supervised this iteration."""
    if clip_len > 3:
        return chain_paths(clip_len)
    n1 = ((GT,), 1)
    paths = [((GT,), 0), ((n1,), 0), n1]
    if long_cycles and iteration % 2 == 1:
        if iteration % 4 == 1:  # [0]->1->2->1->0
            n2 = ((n1,), 2)
            n1b = ((n2,), 1)
            paths += [n2, n1b, ((n1b,), 0)]
        else:  # [0]->1, [0,1]->2, 2->1, [2,1]->0
            n2 = ((GT, n1), 2)
            n1c = ((n2,), 1)
            paths += [n2, n1c, ((n2, n1c), 0)]
    return paths


def chain_paths(clip_len: int) -> list[tuple]:
    """[0]->0, then frames 1..T-1 in order, each from the given frame and the last WINDOW decoded frames (the
    previous frame last: its short-term `last` is read), then frames T-2..0 in order from the last frame and those
    decoded since (frame 0 is not in their memory: the backward pass is the cycle back to the annotated frame)."""
    paths, forward = [((GT,), 0)], []
    for t in range(1, clip_len):
        forward.append(((GT, *forward[-WINDOW:]), t))
    backward = [forward[-1]]
    for t in range(clip_len - 2, -1, -1):
        backward.append((tuple(backward[-WINDOW:]), t))
    return paths + forward + backward[1:]


def dice_loss(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """probs, target (B, K, H, W) for the objects only (background excluded); valid (B, K)."""
    inter = (probs * target).flatten(2).sum(-1)
    denom = probs.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    d = 1 - (2 * inter + 1) / (denom + 1)
    return (d * valid).sum() / valid.sum().clamp(min=1)


def presence_loss(presence: torch.Tensor, present: torch.Tensor, valid: torch.Tensor,
                  balanced: bool = False) -> torch.Tensor:
    """Binary cross-entropy of presence logits (B, K) against whether each object is in the frame (B, K) bool, over
    the valid (B, K) slots: one mean, or (balanced) the mean of the present slots' mean and the absent slots' mean
    (of those that occur)."""
    bce = F.binary_cross_entropy_with_logits(presence.float(), present.float(), reduction="none")
    if not balanced:
        return (bce * valid).sum() / valid.sum().clamp(min=1)
    groups = (valid & present, valid & ~present)
    means = [(bce * g).sum() / g.sum().clamp(min=1) for g in groups]
    occur = torch.stack([g.any() for g in groups]).float()
    return (torch.stack(means) * occur).sum() / occur.sum().clamp(min=1)


@torch.no_grad()
def per_object_scores(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor):
    """Sums over the batch of each object slot's IoU (prediction = argmax) and Dice loss, and how many samples
    hold that slot: three (K,) tensors, from logits (B, 1 + K, H, W) (background merged). Logged per object, so
    that a collapse onto one id shows."""
    merged = logits.float()
    pred = F.one_hot(probs_to_labels(merged), merged.shape[1]).permute(0, 3, 1, 2)[:, 1:].bool()
    gt = target > 0.5
    inter, union = (pred & gt).flatten(2).sum(-1), (pred | gt).flatten(2).sum(-1)
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))
    probs = merged.softmax(1)[:, 1:]
    dice = 1 - (2 * (probs * target).flatten(2).sum(-1) + 1) / (probs.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1)
    v = valid.float()
    return (iou * v).sum(0), (dice * v).sum(0), v.sum(0)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
              void: torch.Tensor | None = None, hard: float = 1.0) -> torch.Tensor:
    """Cross-entropy + Dice at full resolution. logits (B, 1 + K, H, W) (background merged: `merged_logits`);
    target (B, K, H, W) one-hot; void (B, H, W) bool: pixels whose label is unknown, left out of both terms.
    hard < 1: the cross-entropy is the mean over each image's `hard` share of its known pixels with the highest
    cross-entropy (bootstrapped CE, as STCN / XMem / Cutie train): the easy background stops diluting the few pixels
    where a mask spills onto a look-alike or misses a part."""
    merged = logits.float()
    labels = torch.where(target.sum(1) > 0, probs_to_labels(target) + 1, torch.zeros_like(target[:, 0], dtype=torch.long))
    probs = merged.softmax(1)[:, 1:]
    if void is not None:
        labels = labels.masked_fill(void, -100)  # F.cross_entropy's ignore_index
        known = (~void)[:, None].to(probs.dtype)
        probs, target = probs * known, target * known
    ce = F.cross_entropy(merged, labels) if hard >= 1 else hardest_mean(F.cross_entropy(
        merged, labels, reduction="none").flatten(1), labels.flatten(1) >= 0, hard)
    return ce + dice_loss(probs, target, valid.float())


def read_loss(read: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """How far the short-term path's read of the given frame (`ShortTermPath.read_given`) is from the truth: binary
    cross-entropy + Dice of read (B, I, h, w) in [0, 1] against truth (B, I, h, w) soft masks at the same stride, over
    the valid (B, I) objects. The read is a softmax average of given masks, 0 or 1 where all top-k matches agree:
    clamped for the cross-entropy."""
    bce = F.binary_cross_entropy(read.float().clamp(1e-4, 1 - 1e-4), truth.float(), reduction="none").flatten(2).mean(-1)
    v = valid.float()
    return (bce * v).sum() / v.sum().clamp(min=1) + dice_loss(read.float(), truth.float(), v)


def separation_loss(f8: torch.Tensor, masks_s8: torch.Tensor, valid: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """How alike the features of different objects of one frame are: the mean over pairs of labelled objects of
    relu(cosine of their mask-averaged features - margin). f8 (B, C, h, w) features, masks_s8 (B, K, h, w) in [0, 1],
    valid (B, K). Objects that cover less than one cell, and frames with fewer than two objects, add nothing.
    The descriptors are made from these averages, and objects whose averages are alike are confused
    (results/self_decode.py: `near`)."""
    area = masks_s8.flatten(2).sum(-1)  # (B, K)
    summed = torch.einsum("bkp,bcp->bkc", masks_s8.flatten(2).to(f8.dtype), f8.flatten(2))
    unit = F.normalize(summed.float(), dim=-1)  # the division by the area would not change the direction
    use = valid & (area >= 1)
    pair = use[:, :, None] & use[:, None, :] & ~torch.eye(use.shape[1], dtype=torch.bool, device=use.device)
    cos = unit @ unit.transpose(1, 2)
    return (F.relu(cos - margin) * pair).sum() / pair.sum().clamp(min=1)


def walk_loss(f8: list[torch.Tensor], temperature: float = WALK_TEMPERATURE) -> torch.Tensor:
    """The contrastive random walk (Jabri et al. 2020, "Space-time correspondence as a contrastive random walk") on a
    clip's own frames, no masks needed: f8 per frame (B, C, h, w) stride-8 features, pooled to stride 16 at unit norm;
    each step of a walk goes from every pixel to the next frame's pixels with the softmax of their cosine / temperature.
    For every k in 1..T-1 the palindrome 0 -> 1 -> ... -> k -> ... -> 0 should bring each pixel of frame 0 back to
    itself: the mean over the walks of the cross-entropy of that return. Low only where the features follow each pixel
    through the clip, one instance apart from its look-alikes."""
    x = [F.normalize(F.avg_pool2d(f.float(), 2).flatten(2), dim=1) for f in f8]  # (B, C, n)
    step = lambda a, b: (a.transpose(1, 2) @ b / temperature).softmax(-1)  # noqa: E731  (B, n, n), rows sum to 1
    there = [step(a, b) for a, b in zip(x, x[1:])]
    back = [step(b, a) for a, b in zip(x, x[1:])]
    losses, walk, ret = [], there[0], back[0]
    for k in range(len(there)):
        if k:
            walk, ret = walk @ there[k], back[k] @ ret  # frame 0 -> frame k + 1, and frame k + 1 -> frame 0
        diag = (walk @ ret).diagonal(dim1=1, dim2=2)  # (B, n): the chance each pixel comes home
        losses.append(-diag.clamp(min=1e-20).log().mean())
    return torch.stack(losses).mean()


def hardest_mean(loss: torch.Tensor, known: torch.Tensor, share: float) -> torch.Tensor:
    """loss, known (B, N): the mean over every row's ceil(share * its known count) highest known values, all rows
    together (by sorting: no host sync)."""
    ranked = loss.masked_fill(~known, -1.0).sort(1, descending=True).values
    k = (known.sum(1, keepdim=True) * share).ceil()
    keep = torch.arange(loss.shape[1], device=loss.device) < k
    return (ranked * keep).sum() / k.sum().clamp(min=1)


def hard_share(iteration: int, share: float, ramp: int) -> float:
    """The hard-pixel share of bootstrapped CE at an iteration: all pixels (1) at the start, down linearly to `share`
    over the first `ramp` iterations (STCN's schedule, shortened to a fine-tune)."""
    return 1.0 - (1.0 - share) * min(1.0, iteration / max(ramp, 1))


class CycleGraph:
    """The nodes of one batch's cycles, each computed once through the model's per-frame step (`HODOR.step`,
    the same one inference runs): `desc(node)` its descriptors, `logits(node)` its stride-4 logits."""

    def __init__(self, model: nn.Module, feats: list[Features], masks: torch.Tensor, valid: torch.Tensor,
                 detach_masks: bool, paths: list | None = None, memory_noise: float = 0.0, carry_dropout: float = 0.0,
                 memory_swap: float = 0.0):
        """feats: per-frame features; masks (B, T, K, H, W) (frame 0 = the annotated one); valid (B, K).
        paths: the nodes whose logits will be asked for; nodes that are only ends of paths skip re-encoding.
        memory_noise: the chance that a predicted frame leaves an object's mask corrupted to memory (corrupt_masks).
        carry_dropout: the chance that a node reads an object as absent from its previous frame (withhold_carry).
        memory_swap: the chance that a predicted frame leaves an object's mask with part of another's (corrupt_masks)."""
        self.m, self.feats, self.masks, self.valid, self.detach = model, feats, masks, valid, detach_masks
        self.perturb = (partial(corrupt_masks, chance=memory_noise, swap=memory_swap)
                        if memory_noise > 0 or memory_swap > 0 else None)
        self.carry_dropout = carry_dropout
        self.ends_only = set(paths or ()) - set().union(*(sources_of(p) for p in paths or ()))
        B = valid.shape[0]
        self.q_valid = torch.cat([torch.ones(B, model.num_bg, dtype=torch.bool, device=valid.device), valid], 1)
        self._out: dict = {}

    def output(self, node) -> StepOutput:
        if node not in self._out:
            m = self.m
            if node == GT:
                f = self.feats[0]
                self._out[node] = m.step(f, given=m.masks_to_s4(self.masks[:, 0], f), valid=self.valid)
            else:
                sources, target = node
                memory = torch.stack([self.desc(s) for s in sources], 1)
                mem_valid = self.q_valid[:, None].expand(-1, len(sources), -1)
                previous = sources[-1]
                last = None if frame_of(previous) == target else self.output(previous).last
                if last is not None and self.carry_dropout > 0:
                    last = withhold_carry(last, self.carry_dropout)
                first = sources[0]  # the given frame: the annotated one going forward, the turning one coming back
                given_frame = None if frame_of(first) == target else self.output(first).last
                self._out[node] = m.step(self.feats[target], memory, mem_valid, valid=self.valid,
                                         detach_probs=self.detach, encode=node not in self.ends_only, last=last,
                                         given_frame=given_frame, perturb=self.perturb)
        return self._out[node]

    def desc(self, node) -> torch.Tensor:
        return self.output(node).desc

    def logits(self, node) -> torch.Tensor:
        return self.output(node).logits


def split_features(model: nn.Module, images: torch.Tensor) -> list[Features]:
    """Features of (B, T, 3, H, W) clips in one backbone pass, as one Features per frame."""
    B, T, _, H, W = images.shape
    f = model.features(images.flatten(0, 1))
    per_frame = lambda x: None if x is None else x.view(B, T, *x.shape[1:]).unbind(1)  # noqa: E731
    f4, f8, key, f2 = (per_frame(x) or [None] * T for x in (f.f4, f.f8, f.key, f.f2))
    return [Features(f4[t], f8[t], (H, W), key[t], f2[t]) for t in range(T)]


class CycleModel(nn.Module):
    """Wraps HODOR so that one forward() computes all cycle losses of a batch (what DDP needs to wrap)."""

    def __init__(self, model: nn.Module, detach_masks: bool, long_cycles: bool, presence_balanced: bool = False,
                 memory_noise: float = 0.0, hard_pixels: float = 1.0, hard_ramp: int = 0, appearance_loss: float = 0.0,
                 separation_loss: float = 0.0, read_loss: float = 0.0, carry_dropout: float = 0.0,
                 walk_loss: float = 0.0, memory_swap: float = 0.0):
        """hard_pixels, hard_ramp: bootstrapped CE (mask_loss's `hard`), all pixels at iteration 0 down to
        `hard_pixels` at iteration `hard_ramp` (hard_share). appearance_loss: weight of a second mask loss on every
        supervised path's logits from the descriptors alone (`StepOutput.appearance`), so that the descriptors keep
        objects apart by themselves and not only with the short-term path's offsets. separation_loss: weight of
        `separation_loss` on the features of every frame with known masks, added to the mean of the paths' losses.
        read_loss: weight of `read_loss` on the short-term path's read of frame 0's given masks into every later frame
        with known masks (the truth known by construction in photo clips; pseudo-labels in dense ones), added the same
        way: the path's keys learn to find the given object again, not only through the decode's loss.
        carry_dropout: the chance that a decode reads an object as absent from the previous frame (withhold_carry).
        walk_loss: weight of `walk_loss` on every clip's stride-8 features (its frames, with or without masks), added
        the same way: features that tell instances of one kind apart, learned from the video itself."""
        if read_loss > 0 and not (model.short_term is not None and model.short_term.given_topk):
            raise VosError("cycles.read_loss supervises the short-term path's given-frame read: it needs "
                           "model.short_term with given_topk > 0")
        super().__init__()
        self.model, self.detach_masks, self.long_cycles = model, detach_masks, long_cycles
        self.presence_balanced, self.memory_noise = presence_balanced, memory_noise
        self.hard_pixels, self.hard_ramp, self.appearance_loss = hard_pixels, hard_ramp, appearance_loss
        self.separation_loss, self.read_loss, self.carry_dropout = separation_loss, read_loss, carry_dropout
        self.walk_loss, self.memory_swap = walk_loss, memory_swap

    def forward(self, batch: dict, iteration: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """Returns (mean loss, loss per supervised path, outputs: detached full-size logits per path (background
        merged), and
        "per_object": (3, K) sums over paths and clips of each object slot's IoU and Dice loss, and counts)."""
        m = self.model
        images, masks, valid, has = batch["images"], batch["masks"], batch["valid"], batch["has_mask"]
        H, W = images.shape[-2:]
        feats = split_features(m, images)
        paths = cycle_paths(iteration, self.long_cycles, images.shape[1])
        graph = CycleGraph(m, feats, masks, valid, self.detach_masks, paths, self.memory_noise, self.carry_dropout,
                           self.memory_swap)
        present = masks.flatten(3).amax(-1) > 0  # (B, T, K); unknown frames (no mask) count as present
        present = present | ~has[:, :, None]
        losses: dict[str, torch.Tensor] = {}
        outputs = {}
        K = valid.shape[1]
        hard = hard_share(iteration, self.hard_pixels, self.hard_ramp)
        scores = torch.zeros(3, K, device=valid.device)  # per object slot: IoU sum, Dice-loss sum, count
        for path in paths:
            target = path[1]
            sup = has[:, target]
            if not sup.any():
                continue  # sparse regime: frames without masks get no loss
            frames = sorted(set().union(*(node_frames(s) for s in path[0])))
            in_path = present[:, frames].any(1) & valid  # objects absent from every source frame -> background
            tgt = masks[:, target] * in_path[:, :, None, None]
            lg = m.output_logits(graph.logits(path), feats[target], (H, W))
            # clips without a mask at this frame are left out as void, not indexed out: indexing the full-size
            # logits (and its backward) cost ~10 % of a training step
            void = ~sup[:, None, None].expand(-1, H, W)
            if "void" in batch:
                void = void | batch["void"][:, target]
            sup_valid = valid & sup[:, None]
            loss = mask_loss(lg, tgt, sup_valid, void, hard)
            appearance = graph.output(path).appearance
            if self.appearance_loss > 0 and appearance is not None:
                alone = m.output_logits(appearance, feats[target], (H, W))
                loss = loss + self.appearance_loss * mask_loss(alone, tgt, sup_valid, void, hard)
            presence = graph.output(path).presence
            if presence is not None:
                loss = loss + PRESENCE_WEIGHT * presence_loss(presence, tgt.flatten(2).amax(-1) > 0, sup_valid,
                                                                self.presence_balanced)
            losses[name_of(path)] = loss
            outputs[name_of(path)] = lg.detach()
            scores += torch.stack(per_object_scores(lg, tgt, sup_valid))
        total = sum(losses.values()) / len(losses)
        if self.separation_loss > 0:
            sep = torch.stack([separation_loss(f.f8, F.avg_pool2d(m.masks_to_s4(masks[:, t], f), 2),
                                               valid & has[:, t, None]) for t, f in enumerate(feats)]).mean()
            losses["separation"] = sep
            total = total + self.separation_loss * sep
        if self.read_loss > 0:
            T, st, given = len(feats), m.short_term, graph.output(GT).last
            # frames 1..T-1 as one batch, each reading frame 0 (its true masks, forced in by the GT step)
            given = LastFrame(given.keys.repeat(T - 1, 1, 1, 1), given.masks.repeat(T - 1, 1, 1, 1))
            read = st.read_given(torch.cat([f.key for f in feats[1:]]), given, K)
            # the truth at the read's stride 16: stride 4 pooled by 4
            truth = torch.cat([F.avg_pool2d(m.masks_to_s4(masks[:, t], feats[t]), 4) for t in range(1, T)])
            known = torch.cat([valid & has[:, t, None] for t in range(1, T)])
            losses["read"] = read_loss(read, truth.to(read.dtype), known)
            total = total + self.read_loss * losses["read"]
        if self.walk_loss > 0:
            losses["walk"] = walk_loss([f.f8 for f in feats])
            total = total + self.walk_loss * losses["walk"]
        outputs["per_object"] = scores
        return total, losses, outputs


def name_of(node) -> str:
    """The frames a node's prediction walked through: "0>1>0" is frame 0 decoded from frame 1's node, itself from
    the given frame 0; "~>" marks a decode from several nodes (a memory), of which the named one is the last (the
    previous frame): "0>1~>2" is frame 2 from the given frame and 0>1."""
    if node == GT:
        return "0"
    sources, target = node
    return f"{name_of(sources[-1])}{'~' if len(sources) > 1 else ''}>{target}"
