"""Self-attention over the pixel map, as pluggable decoder blocks (`decoder.pixel_block: <name>`).

Every block maps (B, C, h, w) -> (B, C, h, w) (the decoder adds it residually) and uses multi-head attention
in the standard formulation: 1x1 projections to queries, keys and values, per-head attention, an output
projection. They differ in which positions attend to which, and how the attention is computed:

- dense: non-local / multi-head self-attention over all positions, O((hw)^2) memory (the reference).
- interlaced: interlaced sparse self-attention: long-range attention within groups of positions sampled
  at a fixed interval, then short-range attention within local blocks.
- efficient: efficient attention (Shen et al.): softmax over q's channels and over k's positions, computed
  as q (k^T v), linear in hw. normalization="scaling" gives (q k^T / n) v exactly.
- linear: linear attention by a first-order Taylor expansion of softmax (Li et al.): exp(q.k) ~ 1 + q^.k^
  with L2-normalised q^, k^.
- criss_cross: criss-cross attention (CCNet): each position attends to its row and column; R recurrences
  with shared weights (R = 2 reaches the whole image).
- salient: salient-position attention (SPANet): all queries attend to the top-k positions ranked by the
  squared norm of their features.
- axial_channelized: channelized axial attention: column then row attention, where each axial step's
  aggregated values are re-weighted per channel by a gate computed from the query position's features
  (a compact reading of CAA's channelization; the paper computes channel weights from the attention
  intermediates).
- squeeze: squeeze-and-attention (SANet): a pooled ("squeezed") attention branch multiplies and is added to
  a convolutional branch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _QKV(nn.Module):
    """1x1 Q/K/V projections and an output projection, with head split/merge helpers."""

    def __init__(self, dim: int, heads: int, qk_dim: int | None = None):
        super().__init__()
        assert dim % heads == 0, f"pixel attention: channels {dim} must be divisible by heads {heads}"
        self.heads, self.qk_dim = heads, qk_dim or dim
        self.q = nn.Conv2d(dim, self.qk_dim, 1)
        self.k = nn.Conv2d(dim, self.qk_dim, 1)
        self.v = nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> q, k, v as (B, heads, h*w, d)."""
        B = x.shape[0]

        def split(t):
            return t.reshape(B, self.heads, t.shape[1] // self.heads, -1).transpose(-1, -2)

        return split(self.q(x)), split(self.k(x)), split(self.v(x))

    def merge(self, o: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, heads, h*w, d) -> output projection of (B, C, h, w)."""
        B, H, N, d = o.shape
        return self.out(o.transpose(-1, -2).reshape(B, H * d, h, w))


class DenseAttention(_QKV):
    """Multi-head self-attention over all positions, with the (hw x hw) attention matrix made explicit (the
    non-local reference: its memory is quadratic, which is what the other blocks avoid)."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = self.tokens(x)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        return self.merge(attn @ v, h, w)


def _group_attention(q, k, v, valid=None):
    """Attention within groups: q, k, v (B*, heads, G, n, d); valid (G, n) marks real (unpadded) keys."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if valid is not None:
        logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    return logits.softmax(-1) @ v


class InterlacedAttention(nn.Module):
    """Interlaced sparse self-attention: pad to multiples of the block size (P_h, P_w); the long-range step
    attends among positions with the same offset inside their block (spaced P apart), the short-range step
    within each block. Each step is a full multi-head attention with its own projections."""

    def __init__(self, dim: int, heads: int = 8, block: tuple[int, int] = (8, 8)):
        super().__init__()
        self.block = block
        self.long, self.short = _QKV(dim, heads), _QKV(dim, heads)

    def _step(self, proj: _QKV, x: torch.Tensor, valid: torch.Tensor, long_range: bool) -> torch.Tensor:
        B, C, Hp, Wp = x.shape
        ph, pw = self.block
        qh, qw = Hp // ph, Wp // pw
        q, k, v = (t.reshape(B, proj.heads, C // proj.heads, qh, ph, qw, pw) for t in (proj.q(x), proj.k(x), proj.v(x)))
        # long range: groups indexed by the offset (ph, pw), members spread over the blocks (qh, qw)
        # short range: groups indexed by the block (qh, qw), members are the offsets inside it
        perm = (0, 1, 4, 6, 3, 5, 2) if long_range else (0, 1, 3, 5, 4, 6, 2)
        G, n = (ph * pw, qh * qw) if long_range else (qh * qw, ph * pw)
        q, k, v = (t.permute(*perm).reshape(B, proj.heads, G, n, -1) for t in (q, k, v))
        m = valid.reshape(qh, ph, qw, pw).permute(*((1, 3, 0, 2) if long_range else (0, 2, 1, 3))).reshape(G, n)
        o = _group_attention(q, k, v, m)  # (B, heads, G, n, d)
        inv = [0] * 7
        for i, p in enumerate(perm):
            inv[p] = i
        d = o.shape[-1]
        shape = (B, proj.heads, ph, pw, qh, qw, d) if long_range else (B, proj.heads, qh, qw, ph, pw, d)
        o = o.reshape(shape).permute(*inv).reshape(B, C, Hp, Wp)
        return proj.out(o)

    def forward(self, x: torch.Tensor, steps: tuple[str, ...] = ("long", "short")) -> torch.Tensor:
        B, C, h, w = x.shape
        ph, pw = self.block
        pad_h, pad_w = -h % ph, -w % pw
        xp = F.pad(x, (0, pad_w, 0, pad_h))
        valid = torch.zeros(h + pad_h, w + pad_w, dtype=torch.bool, device=x.device)
        valid[:h, :w] = True
        if "long" in steps:
            y = self._step(self.long, xp, valid, True)
            xp = xp + y if "short" in steps else y
        if "short" in steps:
            xp = self._step(self.short, xp, valid, False)
        return xp[..., :h, :w]


class EfficientAttention(_QKV):
    """Efficient attention: per head, softmax of q over its channels and of k over positions, then
    q (k^T v): O(hw d^2) time and O(hw d) memory. normalization="scaling": q (k^T v) / n, which equals
    dot-product attention with scaling normalisation, (q k^T / n) v."""

    def __init__(self, dim: int, heads: int = 8, normalization: str = "softmax"):
        super().__init__(dim, heads)
        self.normalization = normalization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = self.tokens(x)
        if self.normalization == "softmax":
            q, k = q.softmax(-1), k.softmax(-2)
            context = k.transpose(-1, -2) @ v  # (B, heads, d, d)
        else:
            context = k.transpose(-1, -2) @ v / q.shape[-2]
        return self.merge(q @ context, h, w)


class LinearAttention(_QKV):
    """Linear attention from the first-order Taylor expansion of softmax: with L2-normalised q^, k^,
    out_i = (sum_j v_j + q^_i (K^T V)) / (n + q^_i . sum_j k^_j). Weights 1 + q^.k^ are >= 0."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = self.tokens(x)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        n = q.shape[-2]
        num = v.sum(-2, keepdim=True) + q @ (k.transpose(-1, -2) @ v)
        den = n + q @ k.sum(-2).unsqueeze(-1)
        return self.merge(num / den, h, w)


class CrissCrossAttention(nn.Module):
    """Criss-cross attention: each position attends to the positions of its row and its column (itself once).
    Applied `recurrences` times with shared weights, each time residually."""

    def __init__(self, dim: int, heads: int = 8, recurrences: int = 2):
        super().__init__()
        self.proj = _QKV(dim, heads)
        self.recurrences = recurrences

    def once(self, x: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x.shape
        H = self.proj.heads
        q, k, v = (t.reshape(B, H, -1, h, w) for t in (self.proj.q(x), self.proj.k(x), self.proj.v(x)))
        scale = 1 / math.sqrt(q.shape[2])
        e_col = torch.einsum("bndyx,bndzx->bnyxz", q, k) * scale  # (B, H, h, w, h): same column
        e_row = torch.einsum("bndyx,bndyz->bnyxz", q, k) * scale  # (B, H, h, w, w): same row
        self_mask = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # counted in the row already
        e_col = e_col.masked_fill(self_mask, float("-inf"))
        a = torch.cat([e_col, e_row], -1).softmax(-1)
        out = torch.einsum("bnyxz,bndzx->bndyx", a[..., :h], v) + torch.einsum("bnyxz,bndyz->bndyx", a[..., h:], v)
        return self.proj.out(out.reshape(B, C, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(self.recurrences):
            y = y + self.once(y)
        return y - x


class SalientAttention(_QKV):
    """Salient-position attention: every query attends only to the top-k positions ranked by the squared L2
    norm of their features (k = ratio * hw, at least 1)."""

    def __init__(self, dim: int, heads: int = 8, ratio: float = 0.1):
        super().__init__(dim, heads)
        self.ratio = ratio

    def salient(self, x: torch.Tensor) -> torch.Tensor:
        """Indices (B, k) of the salient positions."""
        n = x.shape[-2] * x.shape[-1]
        score = x.flatten(2).pow(2).sum(1)
        return score.topk(max(1, int(round(self.ratio * n))), dim=-1).indices

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        h, w = x.shape[-2:]
        q, k, v = self.tokens(x)
        idx = self.salient(x)[:, None, :, None]
        k = k.gather(2, idx.expand(-1, k.shape[1], -1, k.shape[-1]))
        v = v.gather(2, idx.expand(-1, v.shape[1], -1, v.shape[-1]))
        attn = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        out = self.merge(attn @ v, h, w)
        return (out, attn, idx[:, 0, :, 0]) if return_weights else out


class AxialChannelizedAttention(nn.Module):
    """Column attention then row attention (multi-head), each followed by a per-position channel gate."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        self.col, self.row = _QKV(dim, heads), _QKV(dim, heads)
        self.gate_col, self.gate_row = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)

    @staticmethod
    def _axial(proj: _QKV, x: torch.Tensor, along_h: bool) -> torch.Tensor:
        B, C, h, w = x.shape
        H = proj.heads
        q, k, v = (t.reshape(B, H, -1, h, w) for t in (proj.q(x), proj.k(x), proj.v(x)))
        if along_h:
            q, k, v = (t.permute(0, 1, 4, 3, 2) for t in (q, k, v))  # (B, H, w, h, d)
        else:
            q, k, v = (t.permute(0, 1, 3, 4, 2) for t in (q, k, v))  # (B, H, h, w, d)
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.permute(0, 1, 4, 3, 2) if along_h else o.permute(0, 1, 4, 2, 3)
        return proj.out(o.reshape(B, C, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._axial(self.col, x, True) * torch.sigmoid(self.gate_col(x))
        y = y + x
        return self._axial(self.row, y, False) * torch.sigmoid(self.gate_row(y)) + y - x


class SqueezeAttention(nn.Module):
    """Squeeze-and-attention: out = up(A) * conv(x) + up(A), where A is multi-head self-attention computed on
    an average-pooled (squeezed) copy of the map."""

    def __init__(self, dim: int, heads: int = 8, pool: int = 4):
        super().__init__()
        self.pool = pool
        self.attn = _QKV(dim, heads)
        self.conv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(8 if dim % 8 == 0 else 1, dim),
                                  nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = F.avg_pool2d(x, self.pool, ceil_mode=True)
        q, k, v = self.attn.tokens(s)
        a = self.attn.merge(F.scaled_dot_product_attention(q, k, v), *s.shape[-2:])
        a = F.interpolate(a, size=(h, w), mode="bilinear", align_corners=False)
        return a * self.conv(x) + a


ATTENTION_BLOCKS = {
    "dense": DenseAttention, "interlaced": InterlacedAttention, "efficient": EfficientAttention,
    "linear": LinearAttention, "criss_cross": CrissCrossAttention, "salient": SalientAttention,
    "axial_channelized": AxialChannelizedAttention, "squeeze": SqueezeAttention,
}
