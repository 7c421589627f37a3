"""Multi-head attention with differentiable soft masks (Athar et al., 2022).

For head h, query i, key j and soft mask m_ij in [0, 1]:

    logit_hij = (q_hi . k_hj) / sqrt(d_head) - alpha_h * (1 - m_ij)

alpha_h is learnable per head. The subtraction is a float additive attention mask, so the fast path is
`F.scaled_dot_product_attention(attn_mask=bias)`; `explicit=True` runs the plain formula (for tests).
m = 1 everywhere gives standard attention; alpha -> inf gives hard masked attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def default_alphas(heads: int) -> list[float]:
    """The paper's init for 8 heads is 32, 32, 16, 16, 8, 8, 4, 4: four octaves from 32 down to 4, spread
    evenly over the heads (so 4 heads get 32, 16, 8, 4 and 16 heads get four of each)."""
    return [32.0 / 2 ** math.floor(4 * h / heads) for h in range(heads)]


def attention_bias(mask: torch.Tensor | None, alpha: torch.Tensor, key_padding: torch.Tensor | None,
                   dtype: torch.dtype) -> torch.Tensor | None:
    """Additive bias (B, H, Nq, Nk) from a soft mask (B, Nq, Nk) and key padding (B, Nk; True = ignore)."""
    bias = None
    if mask is not None:
        bias = -alpha.view(1, -1, 1, 1).to(dtype) * (1 - mask.to(dtype)).unsqueeze(1)
    if key_padding is not None:
        pad = torch.zeros(key_padding.shape, dtype=dtype, device=key_padding.device)
        pad = pad.masked_fill(key_padding, float("-inf"))[:, None, None, :]
        bias = pad if bias is None else bias + pad
    return bias


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C // heads)."""
    B, N, C = x.shape
    return x.view(B, N, heads, C // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, D) -> (B, N, heads * D)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


class SoftMaskedAttention(nn.Module):
    """Standard Q/K/V/out-projection multi-head attention with an optional soft mask and key padding."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, alphas: list[float] | None = None,
                 soft: bool = True):
        """soft=False: plain multi-head attention (no alpha parameter; passing a mask is then an error)."""
        super().__init__()
        assert dim % heads == 0, f"dim {dim} must be divisible by heads {heads}"
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.alpha = nn.Parameter(torch.tensor(alphas or default_alphas(heads), dtype=torch.float32)) if soft else None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None, key_padding: torch.Tensor | None = None,
                explicit: bool = False) -> torch.Tensor:
        """query (B, Nq, C), key/value (B, Nk, C), mask (B, Nq, Nk) in [0, 1], key_padding (B, Nk) bool."""
        q, k, v = (split_heads(x, self.heads) for x in (self.q(query), self.k(key), self.v(value)))
        bias = attention_bias(mask, self.alpha, key_padding, q.dtype)
        p = self.dropout if self.training else 0.0
        if explicit:
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if bias is not None:
                logits = logits + bias
            out = F.dropout(logits.softmax(-1), p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.out(merge_heads(out))


class DescriptorAttention(nn.Module):
    """Cross-attention from pixels (queries) to descriptors (keys/values), as in HODOR's decoder.

    Background and object descriptors have separate key/value projections: they play different roles
    (a few descriptors covering everything else vs. one per object)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} must be divisible by heads {heads}"
        self.heads = heads
        self.q, self.k, self.v, self.out, self.k_bg, self.v_bg = (nn.Linear(dim, dim) for _ in range(6))

    def forward(self, pixels: torch.Tensor, desc: torch.Tensor, is_bg: torch.Tensor,
                key_padding: torch.Tensor) -> torch.Tensor:
        """pixels (B, Np, C); desc (B, N, C); is_bg (N,) bool; key_padding (B, N) bool (True = ignore)."""
        bg = is_bg[None, :, None]
        q = split_heads(self.q(pixels), self.heads)
        k = split_heads(torch.where(bg, self.k_bg(desc), self.k(desc)), self.heads)
        v = split_heads(torch.where(bg, self.v_bg(desc), self.v(desc)), self.heads)
        bias = attention_bias(None, None, key_padding, q.dtype)
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias)))
