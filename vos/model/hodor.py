"""HODOR: high-level object descriptors for object re-segmentation, with soft-masked attention.

Shapes: B clips, T past frames, I objects (padded per batch; `valid` flags real ones), C channels,
Qb = bg_grid**2 background descriptors, Q = Qb + I descriptors per frame (background first).
Frames are padded to a multiple of 32 (`pad_to_stride`); every map below covers the padded frame.

The one per-frame step, shared by training (vos.train.cycles) and inference (vos.inference.tracker):

    feats = model.features(images)                      # once per frame: backbone + FPN
    given = model.masks_to_s4(masks, feats)              # masks at any resolution -> stride 4, once
    out = model.step(feats, memory, memory_valid, given, given_valid)
    out.logits  # (B, 1 + Qb + I, H/4, W/4) decoded from the past descriptors (None without memory)
    out.probs   # (B, 1 + I, H/4, W/4) probabilities after the given masks are forced in
    out.desc    # (B, Qb + I, C) this frame's descriptors, re-encoded from out.probs
    out.last    # what the next frame's short-term path reads (None without one): pass it as step(..., last=)
    model.output_probs(out.probs, feats, (H', W'))      # stride 4 -> (decoder.refine: stride 2 ->) any size, once
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vos.model.attention import DescriptorAttention, SoftMaskedAttention
from vos.model.backbone import build_backbone
from vos.model.pixel_blocks import build_pixel_block, groups_for
from vos.model.short_term import LastFrame, ShortTermPath

NEG = -1e4  # "minus infinity" that stays finite in fp16/bf16 and in gradients
STRIDE = 32  # inputs are padded to a multiple of the coarsest backbone stride


def pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad the last two dimensions (bottom and right) to a multiple of STRIDE."""
    H, W = x.shape[-2:]
    return F.pad(x, (0, -W % STRIDE, 0, -H % STRIDE))


@dataclass
class StepOutput:
    logits: torch.Tensor | None  # (B, 1 + Qb + I, h4, w4): [catch-all, background cells, objects]; None = no memory
    probs: torch.Tensor  # (B, 1 + I, h4, w4) float32: background, then objects (given masks forced in)
    desc: torch.Tensor | None  # (B, Qb + I, C); None if step(encode=False)
    last: LastFrame | None = None  # this frame for the next one's short-term path (None without the path)
    presence: torch.Tensor | None = None  # (B, I) presence logits (decoder.presence; None: off, or no memory)
    # (B, 1 + Qb + I, h4, w4) the logits decoded from the descriptors alone, before the short-term path's offsets and
    # the presence gate (what training's cycles.appearance_loss supervises); None = no memory
    appearance: torch.Tensor | None = None


@dataclass
class Features:
    f4: torch.Tensor  # (N, Cm, H/4, W/4) mask features
    f8: torch.Tensor  # (N, C, H/8, W/8) attention features
    size: tuple[int, int]  # (H, W) of the unpadded input
    key: torch.Tensor | None = None  # (N, Ck[+C], H/16, W/16) short-term path keys (ShortTermPath.keys; None: no path)
    f2: torch.Tensor | None = None  # (N, C2, H/2, W/2) the backbone's stride-2 map (decoder.refine only)


def sine_position(h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
    """DETR-style 2D sine positional encoding, (h*w, dim): half for y, half for x, coordinates in [0, 2pi]."""
    npf = dim // 4
    y = torch.linspace(0, 2 * math.pi, h, device=device).view(h, 1).expand(h, w)
    x = torch.linspace(0, 2 * math.pi, w, device=device).view(1, w).expand(h, w)
    freq = 10000 ** (torch.arange(npf, device=device, dtype=torch.float32) / npf)
    parts = []
    for c in (y, x):
        a = c.reshape(-1, 1) / freq * 64
        parts += [a.sin(), a.cos()]
    pe = torch.cat(parts, 1)
    return F.pad(pe, (0, dim - pe.shape[1])).to(dtype)


class FPN(nn.Module):
    """Top-down FPN: strides 32/16/8 to C channels (GN), stride 4 to the smaller mask width Cm. With `lateral8`, the
    stride-8 output also gets the stride-8 lateral through a zero-initialised 1x1 conv (ModelConfig.lateral8)."""

    def __init__(self, in_channels: tuple[int, ...], c: int, cm: int, lateral8: bool = False):
        super().__init__()
        c4, c8, c16, c32 = in_channels
        gn = lambda n: nn.GroupNorm(groups_for(n), n)  # noqa: E731
        self.lat = nn.ModuleList([nn.Sequential(nn.Conv2d(ci, c, 1), gn(c)) for ci in (c8, c16, c32)])
        self.smooth8 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), gn(c), nn.ReLU())
        self.lat4 = nn.Sequential(nn.Conv2d(c4, cm, 1), gn(cm))
        self.down8 = nn.Conv2d(c, cm, 1)
        self.smooth4 = nn.Sequential(nn.Conv2d(cm, cm, 3, padding=1), gn(cm), nn.ReLU())
        self.lateral8 = nn.Conv2d(c, c, 1) if lateral8 else None
        if lateral8:
            nn.init.zeros_(self.lateral8.weight)
            nn.init.zeros_(self.lateral8.bias)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x4, x8, x16, x32 = feats
        p = self.lat[2](x32)
        p = self.lat[1](x16) + F.interpolate(p, size=x16.shape[-2:], mode="nearest")
        l8 = self.lat[0](x8)
        p8 = self.smooth8(l8 + F.interpolate(p, size=x8.shape[-2:], mode="nearest"))
        if self.lateral8 is not None:
            p8 = p8 + self.lateral8(l8)
        p4 = self.smooth4(self.lat4(x4) + F.interpolate(self.down8(p8), size=x4.shape[-2:], mode="nearest"))
        return p4, p8


class FFN(nn.Module):
    def __init__(self, c: int, mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c, c * mult), nn.ReLU(), nn.Dropout(dropout), nn.Linear(c * mult, c))

    def forward(self, x):
        return self.net(x)


class EncoderLayer(nn.Module):
    """Descriptor self-attention, soft-masked cross-attention to the frame's pixels, FFN (post-norm)."""

    def __init__(self, c: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.self_attn = SoftMaskedAttention(c, heads, dropout, soft=False)
        self.cross_attn = SoftMaskedAttention(c, heads, dropout)
        self.ffn = FFN(c, ffn_mult, dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(c) for _ in range(3)])

    def forward(self, d, query_embed, pixels, pixel_pos, masks, pad):
        q = d + query_embed
        d = self.norms[0](d + self.self_attn(q, q, d, key_padding=pad))
        d = self.norms[1](d + self.cross_attn(d + query_embed, pixels + pixel_pos, pixels, mask=masks))
        return self.norms[2](d + self.ffn(d))


class DecoderLayer(nn.Module):
    """Pixel-mixing block, cross-attention from pixels to past descriptors, FFN (residual + LayerNorm)."""

    def __init__(self, c: int, heads: int, ffn_mult: int, dropout: float, pixel_block: str):
        super().__init__()
        self.block = build_pixel_block(pixel_block, c, heads)
        self.attn = DescriptorAttention(c, heads)
        self.ffn = FFN(c, ffn_mult, dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(c) for _ in range(3)])

    def forward(self, x, pos, desc, is_bg, pad):
        """x (B, C, h, w); pos (hw, C); desc (B, N, C) all past descriptors; is_bg (N,); pad (B, N) bool."""
        B, C, h, w = x.shape
        x = x + self.block(x)
        t = self.norms[0](x.flatten(2).transpose(1, 2))
        t = self.norms[1](t + self.attn(t + pos, desc, is_bg, pad))
        t = self.norms[2](t + self.ffn(t))
        return t.transpose(1, 2).reshape(B, C, h, w)


def first_valid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x (B, T, Q, C), valid (B, T, Q) bool -> (B, Q, C): each row's entry at its first valid frame (the anchor)."""
    first = valid.to(torch.uint8).max(1).indices  # (B, Q)
    return x.gather(1, first[:, None, :, None].expand(-1, 1, -1, x.shape[-1]))[:, 0]


class AnchorCheck(nn.Module):
    """A learned check of past descriptors against the anchor's: for each past frame and descriptor, a logit offset
    from that descriptor and the same row's first valid one along the memory (the given frame's: the anchor at
    inference, frame 0 going forward in training, the turning frame coming back). A descriptor re-encoded from a
    mask that took in what the object passed behind differs from its anchor, and the check can lower its whole map
    so that the max over past frames falls to the others. The last layer starts at zero: a no-op at first."""

    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * c, c), nn.ReLU(), nn.Linear(c, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, desc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """desc (B, T, Q, C), valid (B, T, Q) bool -> offsets (B, T, Q)."""
        ref = first_valid(desc, valid)[:, None].expand_as(desc)
        return self.net(torch.cat([desc, ref, desc * ref, (desc - ref).abs()], -1)).squeeze(-1)


class Presence(nn.Module):
    """Is each object in this frame at all? A logit per object from what its logit map points at (the mask embedding
    pooled under the map's spatial softmax, and the map's peak) against its anchor key (the object's first valid
    descriptor in the memory, projected like the decoder's keys): SAM 2's object score. The model adds its
    log-sigmoid to the object's logits, so a low score empties the object's whole map and a high one leaves it be. The
    bias starts high and the last weights at zero: a no-op at first (log-sigmoid(6) = -0.0025)."""

    def __init__(self, cm: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * cm + 1, cm), nn.ReLU(), nn.Linear(cm, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, 6.0)

    def forward(self, logits: torch.Tensor, emb: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """logits (B, I, h, w) the objects' maps; emb (B, Cm, h, w); anchor (B, I, Cm) -> presence logits (B, I)."""
        flat = logits.flatten(2).float()
        pooled = torch.einsum("bip,bcp->bic", flat.softmax(-1), emb.flatten(2).float())
        a = anchor.float()
        x = torch.cat([pooled, a, pooled * a, (pooled - a).abs(), flat.amax(-1, keepdim=True) / 10], -1)
        return self.net(x).squeeze(-1)


class Refine(nn.Module):
    """Objects' logits from stride 4 to stride 2 (decoder.refine): bilinear x2, plus for each object a residual
    computed from its upsampled probability and the backbone's stride-2 features, so that a boundary can follow an
    edge the stride-4 map cannot place (a wheel's rim, a shadow's border). The residual's last conv starts at zero:
    the output starts as bilinear upsampling."""

    # The residual is 10x its conv's output: Adam moves a weight by ~lr a step whatever the gradient's scale, and at
    # gain 1 the residual was still 0.08 logits on average (0.26 at most) after 100 steps at the fresh modules' lr.
    GAIN = 10.0

    def __init__(self, c2: int, hidden: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(c2, hidden, 1)
        self.net = nn.Sequential(nn.Conv2d(hidden + 1, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, 1, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, logits: torch.Tensor, probs: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        """logits (B, 1 + I, h, w): background then objects, any logits whose softmax is probs (B, 1 + I, h, w);
        f2 (B, C2, 2h, 2w) -> logits (B, 1 + I, 2h, 2w)."""
        size = f2.shape[-2:]
        f2 = f2.to(self.proj.weight.dtype)  # bf16 features from an autocast pass, refined outside it (the Tracker)
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        p = F.interpolate(probs[:, 1:].to(f2.dtype), size=size, mode="bilinear", align_corners=False)
        B, I = p.shape[:2]
        f = self.proj(f2)
        x = torch.cat([f[:, None].expand(-1, I, -1, -1, -1), p[:, :, None]], 2).flatten(0, 1)
        delta = self.GAIN * self.net(x).view(B, I, *size)
        return torch.cat([up[:, :1], up[:, 1:] + delta.to(up.dtype)], 1)


class HODOR(nn.Module):
    def __init__(self, cfg):
        """cfg: a ModelConfig (see vos.config) or any object with the same attributes."""
        super().__init__()
        self.cfg = cfg
        c, cm, heads = cfg.channels, cfg.mask_channels, cfg.heads
        self.backbone = build_backbone(cfg.backbone, cfg.backbone_weights)
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)
        self.fpn = FPN(self.backbone.channels, c, cm, cfg.lateral8)
        self.num_bg = cfg.bg_grid ** 2
        self.bg_query = nn.Parameter(torch.randn(self.num_bg, c) * 0.02)
        self.obj_query = nn.Parameter(torch.randn(1, c) * 0.02)
        self.encoder = nn.ModuleList(EncoderLayer(c, heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.encoder.layers))
        self.decoder = nn.ModuleList(DecoderLayer(c, heads, cfg.ffn_mult, cfg.dropout, cfg.decoder.pixel_block)
                                     for _ in range(cfg.decoder.layers))
        self.up8 = nn.Conv2d(c, cm, 1)
        self.head = nn.Sequential(nn.Conv2d(cm, cm, 3, padding=1), nn.GroupNorm(groups_for(cm), cm), nn.ReLU())
        self.desc_proj = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, cm * cfg.decoder.mask_keys))
        self.catch_all = nn.Sequential(nn.Conv2d(cm, cm, 3, padding=1), nn.ReLU(), nn.Conv2d(cm, 1, 1))
        self.anchor_check = AnchorCheck(c) if cfg.decoder.anchor_check else None
        self.presence = Presence(cm) if cfg.decoder.presence else None
        self.refine = None
        if cfg.decoder.refine:
            if self.backbone.channels2 is None:
                raise ValueError(f"model.decoder.refine needs a backbone with a stride-2 map; {cfg.backbone} has none: "
                                 "use lite0 or a resnet, or set model.decoder.refine=false")
            self.refine = Refine(self.backbone.channels2)
        st = cfg.short_term
        self.short_term = ShortTermPath(c, st.key_channels, st.radius, given_topk=st.given_topk,
                                        stride=st.stride, distance=st.distance,
                                        similarity=st.similarity, given_ridge=st.given_ridge,
                                        read_prior=st.read_prior) if st.radius else None

    def train(self, mode: bool = True) -> "HODOR":
        """Backbone BatchNorm statistics stay frozen: training batches of a few clips are too small for them."""
        super().train(mode)
        for mod in self.backbone.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()
        return self

    @torch.no_grad()
    def fuse_for_inference(self) -> "HODOR":
        """Fold every BatchNorm that directly follows a conv (in module order) into that conv. Inference only:
        the model can no longer be trained afterwards. Saves ~10% of CPU time."""
        for parent in self.modules():
            kids = list(parent.named_children())
            for (_, conv), (bn_name, bn) in zip(kids, kids[1:]):
                if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                        and bn.track_running_stats and conv.out_channels == bn.num_features):
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = bn.bias - bn.running_mean * scale
                conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias)
                # timm's BatchNormAct2d also applies dropout + activation: keep those.
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                setattr(parent, bn_name, nn.Sequential(*rest))
        return self

    # ------------------------------------------------------------------------------------------ features
    def features(self, images: torch.Tensor) -> Features:
        """images (N, 3, H, W) in [0, 1]; any H, W (padded internally to a multiple of 32)."""
        H, W = images.shape[-2:]
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        # channels-last: oneDNN's convolutions are faster in it on the CPU (both directions), harmless on CUDA
        f2, *rest = self.backbone(pad_to_stride(x).contiguous(memory_format=torch.channels_last))
        f4, f8 = self.fpn(rest)
        return Features(f4, f8, (H, W), self.short_term.keys(f8) if self.short_term else None,
                        f2 if self.refine is not None else None)

    # ------------------------------------------------------------------------------------------- encoder
    def masks_to_s4(self, masks: torch.Tensor, feats: Features) -> torch.Tensor:
        """Soft masks (B, I, h, w) covering the unpadded frame, at any resolution -> (B, I, H/4, W/4) over the
        padded frame, by area averaging (the only place where given masks are resampled)."""
        H, W = feats.size
        h4, w4 = feats.f4.shape[-2:]
        size = (min(h4, -(-H // 4)), min(w4, -(-W // 4)))
        m = masks.float()
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="area")
        return F.pad(m, (0, w4 - size[1], 0, h4 - size[0]))

    def bg_cells(self, h: int, w: int, device, dtype) -> torch.Tensor:
        """(Qb, h, w) 0/1 cells of a bg_grid x bg_grid partition of the stride-8 map."""
        g = self.cfg.bg_grid
        ys = torch.arange(h, device=device) * g // h
        xs = torch.arange(w, device=device) * g // w
        cell = ys[:, None] * g + xs[None, :]
        return (cell[None] == torch.arange(g * g, device=device)[:, None, None]).to(dtype)

    def encode(self, feats: Features, masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Descriptors (B, Qb + I, C) from stride-4 soft masks (B, I, H/4, W/4) in [0, 1] over the padded frame."""
        f = feats.f8
        m = F.avg_pool2d(masks.to(f.dtype), 2)
        B, C, h, w = f.shape
        I = m.shape[1]
        if valid is None:
            valid = torch.ones(B, I, dtype=torch.bool, device=f.device)
        m = m * valid[:, :, None, None].to(f.dtype)
        flat_f = f.flatten(2)  # (B, C, hw)
        flat_m = m.flatten(2)  # (B, I, hw)
        hard = (flat_m > 0.5).to(f.dtype)
        count = hard.sum(-1, keepdim=True)
        mean = torch.einsum("bip,bcp->bic", hard, flat_f) / count.clamp(min=1)
        # An object too small to cover a stride-8 pixel (or absent) keeps a descriptor: its most likely pixel.
        peak = flat_f.transpose(1, 2).gather(1, flat_m.argmax(-1, keepdim=True).expand(B, I, C))
        obj = torch.where(count > 0, mean, peak)
        bg_m = self.bg_cells(h, w, f.device, f.dtype).flatten(1)[None] * (1 - flat_m.sum(1, keepdim=True)).clamp(0, 1)
        bg_w = bg_m.sum(-1, keepdim=True)
        bg = torch.einsum("bkp,bcp->bkc", bg_m, flat_f) / bg_w.clamp(min=1e-6)
        bg = torch.where(bg_w > 1e-6, bg, torch.zeros_like(bg))
        d = torch.cat([bg, obj * valid[..., None].to(f.dtype)], 1)
        attn_masks = torch.cat([bg_m, flat_m], 1)  # (B, Q, hw)
        query = torch.cat([self.bg_query, self.obj_query.expand(I, -1)], 0)[None].to(f.dtype)
        pad = torch.cat([torch.zeros(B, self.num_bg, dtype=torch.bool, device=f.device), ~valid], 1)
        pixels = flat_f.transpose(1, 2)
        pos = sine_position(h, w, C, f.device, f.dtype)[None]
        for layer in self.encoder:
            d = layer(d, query, pixels, pos, attn_masks, pad)
        return d

    # ------------------------------------------------------------------------------------------- decoder
    def decode(self, feats: Features, desc: torch.Tensor, desc_valid: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1 + Qb + I, H/4, W/4) over the padded frame: [catch-all, background cells, objects].

        desc (B, T, Q, C): descriptors of T past frames; desc_valid (B, T, Q) bool: False for padded objects
        and unused frame slots. A logit map is the max over the past frames (and over the descriptor's
        decoder.mask_keys keys) of key . pixel embedding (plus,
        with decoder.anchor_check, each frame's learned offset against the first valid frame: AnchorCheck).
        """
        return self._decode(feats, desc, desc_valid)[0]

    def _decode(self, feats: Features, desc: torch.Tensor,
                desc_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`decode`, plus the mask embedding (B, Cm, H/4, W/4) and the descriptors' keys (B, T, Q, Cm; with
        decoder.mask_keys > 1 the mean of each descriptor's keys)."""
        B, T, Q, C = desc.shape
        x = feats.f8
        h, w = x.shape[-2:]
        pos = sine_position(h, w, C, x.device, x.dtype)[None]
        is_bg = (torch.arange(Q, device=x.device) < self.num_bg).repeat(T)
        flat, pad = desc.reshape(B, T * Q, C), ~desc_valid.reshape(B, T * Q)
        for layer in self.decoder:
            x = layer(x, pos, flat, is_bg, pad)
        e = F.interpolate(self.up8(x), size=feats.f4.shape[-2:], mode="bilinear", align_corners=False)
        e = self.head(e + feats.f4)
        K = self.cfg.decoder.mask_keys
        k = self.desc_proj(desc).unflatten(-1, (K, -1)).flatten(2, 3)  # (B, T, Q * K, Cm)
        logits = torch.einsum("btnc,bchw->btnhw", k, e) / math.sqrt(k.shape[-1])
        if K > 1:  # an object's logit: the max over its keys (no copy of the logits for one key)
            logits = logits.unflatten(2, (Q, K)).amax(3)
        k = k.unflatten(2, (Q, K)).mean(3)
        if self.anchor_check is not None:
            logits = logits + self.anchor_check(desc, desc_valid)[..., None, None].to(logits.dtype)
        logits = logits.masked_fill(~desc_valid[..., None, None], NEG).amax(1)
        return torch.cat([self.catch_all(e), logits], 1), e, k

    def predict(self, feats: Features, memory: torch.Tensor | None, memory_valid: torch.Tensor | None,
                num_objects: int, last: LastFrame | None = None,
                given_frame: LastFrame | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The first half of `step`: (logits, probabilities (B, 1 + I, H/4, W/4), presence logits (B, I) or None,
        the logits from the descriptors alone or None: `StepOutput.appearance`) decoded from past descriptors.

        memory (B, T, Q, C), memory_valid (B, T, Q): descriptors of past frames. None: nothing to decode from (e.g.
        the first annotated frame): logits None and every pixel background. last: the previous frame's
        `StepOutput.last`; with the short-term path (vos.model.short_term) it adds its offsets to the objects'
        logits (None: descriptors only); given_frame: the `StepOutput.last` of the frame whose masks were given,
        which the path also reads with `short_term.given_topk` > 0 (None: not read)."""
        if memory is None:
            probs = torch.zeros(feats.f8.shape[0], 1 + num_objects, *feats.f4.shape[-2:], device=feats.f8.device)
            probs[:, 0] = 1
            return None, probs, None, None
        logits, emb, keys = self._decode(feats, memory, memory_valid)
        appearance = logits
        k = 1 + self.num_bg
        if self.short_term is not None and last is not None:
            off = self.short_term(feats.key, last, num_objects, given_frame)
            off = F.interpolate(off, size=logits.shape[-2:], mode="bilinear", align_corners=False)
            logits = torch.cat([logits[:, :k], logits[:, k:] + off.to(logits.dtype)], 1)
        presence = None
        if self.presence is not None:
            anchor = first_valid(keys[:, :, self.num_bg:], memory_valid[:, :, self.num_bg:])
            presence = self.presence(logits[:, k:], emb, anchor)
            gate = F.logsigmoid(presence)[..., None, None].to(logits.dtype)
            logits = torch.cat([logits[:, :k], logits[:, k:] + gate], 1)
        return logits, logits_to_probs(logits, self.num_bg), presence, appearance

    def remember(self, feats: Features, probs: torch.Tensor) -> LastFrame | None:
        """What this frame leaves for the next one's short-term path: its keys and final probabilities (B, 1 + I,
        H/4, W/4) at the path's stride. None without the path."""
        if self.short_term is None:
            return None
        return LastFrame(feats.key, self.short_term.masks(probs))

    def commit(self, feats: Features, probs: torch.Tensor, given: torch.Tensor | None = None,
               given_valid: torch.Tensor | None = None, valid: torch.Tensor | None = None,
               detach_probs: bool = False, encode: bool = True,
               perturb: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The second half of `step`: force the given masks into `probs`, re-encode this frame's descriptors from
        the result. Returns (probabilities, descriptors or None with encode=False)."""
        if given is not None:
            probs = force_masks(probs, given, given_valid)
        if not encode:
            return probs, None
        if perturb is not None:
            probs = perturb(probs)
        p = probs[:, 1:].detach() if detach_probs else probs[:, 1:]
        return probs, self.encode(feats, p, valid)

    def step(self, feats: Features, memory: torch.Tensor | None = None, memory_valid: torch.Tensor | None = None,
             given: torch.Tensor | None = None, given_valid: torch.Tensor | None = None,
             valid: torch.Tensor | None = None, detach_probs: bool = False, encode: bool = True,
             last: LastFrame | None = None, given_frame: LastFrame | None = None,
             perturb: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepOutput:
        """One frame: decode it from past descriptors (and, with the short-term path, from `last`), force the given
        masks in, re-encode its descriptors (`commit(predict(...))` + `remember`; inference's Tracker runs the same).

        memory (B, T, Q, C), memory_valid (B, T, Q): descriptors of past frames (None: nothing to decode from,
            e.g. the first annotated frame; every pixel is then background unless given).
        given (B, I, H/4, W/4): masks given at this frame, from `masks_to_s4`; given_valid (B, I) bool says which
            objects are given (the others keep their decoded probabilities). A given object owns its pixels.
        valid (B, I) bool: real (not padding) objects. detach_probs: stop gradients through the soft masks
            into the re-encoding (the reference code's choice; training only). encode=False: skip the re-encoding
            (desc None) when nothing will attend to this frame (the last frame of a training cycle).
        last: the previous frame's `StepOutput.last` (None: none, or the path is off).
        given_frame: the `StepOutput.last` of the frame whose masks were given (read by the path with given_topk).
        perturb: training only, like detach_probs: maps this frame's probabilities (B, 1 + I, H/4, W/4) to what it
            leaves to memory when it is re-encoded (descriptors, `last`, `probs`; the logits stay), e.g.
            `vos.train.cycles.corrupt_masks`.
        """
        num_objects = given.shape[1] if given is not None else memory.shape[2] - self.num_bg
        logits, probs, presence, appearance = self.predict(feats, memory, memory_valid, num_objects, last, given_frame)
        probs, desc = self.commit(feats, probs, given, given_valid, valid, detach_probs, encode, perturb)
        return StepOutput(logits, probs, desc, self.remember(feats, probs), presence, appearance)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Three disjoint groups, from the most generic to the most task-specific: "early": the backbone's stages up
        to stride 8; "features": the rest of the backbone and the FPN (per-frame features); "heads": everything
        else (descriptor queries, encoder, decoder, mask head). What `train=late|heads` leave fixed (vos.config)."""
        early = {id(p) for mod in self.backbone.early() for p in mod.parameters()}
        features = {id(p) for mod in (self.backbone, self.fpn) for p in mod.parameters()} - early
        params = list(self.parameters())
        return {"early": [p for p in params if id(p) in early],
                "features": [p for p in params if id(p) in features],
                "heads": [p for p in params if id(p) not in early | features]}

    def upsample(self, x: torch.Tensor, feats: Features, size: tuple[int, int] | None = None) -> torch.Tensor:
        """A map over the padded frame at stride 4 or 2 (B, K, h, w) -> the unpadded frame at `size` (default: the
        input size), in one bilinear interpolation."""
        H, W = feats.size
        oh, ow = size or (H, W)
        h4, w4 = feats.f4.shape[-2:]
        full = (round(4 * h4 * oh / H), round(4 * w4 * ow / W))  # the padded frame at the output scale
        return F.interpolate(x, size=full, mode="bilinear", align_corners=False)[..., :oh, :ow]

    def output_logits(self, logits: torch.Tensor, feats: Features, size: tuple[int, int] | None = None) -> torch.Tensor:
        """What the loss sees: `StepOutput.logits` (B, 1 + Qb + I, H/4, W/4) -> logits (B, 1 + I) at `size`, the
        background merged by max (`merged_logits`); with decoder.refine through the stride-2 refinement."""
        if self.refine is None:
            return merged_logits(self.upsample(logits, feats, size), self.num_bg)
        refined = self.refine(merged_logits(logits, self.num_bg), logits_to_probs(logits, self.num_bg), feats.f2)
        return self.upsample(refined, feats, size)

    def output_probs(self, probs: torch.Tensor, feats: Features, size: tuple[int, int] | None = None) -> torch.Tensor:
        """What the user sees: stride-4 probabilities (B, 1 + I, H/4, W/4) -> probabilities at `size`, through the
        same refinement as `output_logits` with decoder.refine."""
        if self.refine is not None:
            probs = self.refine(probs.clamp(min=1e-6).log(), probs, feats.f2).float().softmax(1)
        return self.upsample(probs, feats, size)


def force_masks(probs: torch.Tensor, given: torch.Tensor, given_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Put given masks into probabilities. probs (B, 1 + I, h, w); given (B, I, h, w) soft masks; given_valid (B, I)
    bool: which objects are given (default all). A given object's channel becomes exactly its mask and it owns
    its pixels: every other channel is scaled by what the given masks leave."""
    gv = (torch.ones(given.shape[:2], dtype=torch.bool, device=given.device) if given_valid is None
          else given_valid)[:, :, None, None]
    g = given.to(probs.dtype) * gv
    keep = (1 - g).prod(1, keepdim=True)
    objs = torch.where(gv, g, probs[:, 1:] * keep)
    probs = torch.cat([probs[:, :1] * keep, objs], 1)
    return probs / probs.sum(1, keepdim=True).clamp(min=1e-6)


def logits_to_probs(logits: torch.Tensor, num_bg: int) -> torch.Tensor:
    """(B, 1 + Qb + I, ...) -> (B, 1 + I, ...): softmax, background = catch-all + all cells."""
    p = logits.float().softmax(1)
    return torch.cat([p[:, : 1 + num_bg].sum(1, keepdim=True), p[:, 1 + num_bg:]], 1)


def merged_logits(logits: torch.Tensor, num_bg: int) -> torch.Tensor:
    """(B, 1 + Qb + I, ...) -> (B, 1 + I, ...): background logits merged by max (for the loss)."""
    return torch.cat([logits[:, : 1 + num_bg].amax(1, keepdim=True), logits[:, 1 + num_bg:]], 1)


def probs_to_labels(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """(B, 1 + I, ...) -> (B, ...) int64 labels: 0 background, k = k-th object (the first on ties).

    `max(dim).indices`, not `argmax(dim)`: on the CPU, argmax over a leading dimension of a few channels is ~50x
    slower (13 ms for (2, 2, 192, 192); it was 10 % of a training step)."""
    return probs.max(dim).indices
