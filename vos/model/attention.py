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

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.view(B, N, self.heads, C // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None, key_padding: torch.Tensor | None = None,
                explicit: bool = False) -> torch.Tensor:
        """query (B, Nq, C), key/value (B, Nk, C), mask (B, Nq, Nk) in [0, 1], key_padding (B, Nk) bool."""
        q, k, v = self._split(self.q(query)), self._split(self.k(key)), self._split(self.v(value))
        bias = attention_bias(mask, self.alpha, key_padding, q.dtype)
        p = self.dropout if self.training else 0.0
        if explicit:
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if bias is not None:
                logits = logits + bias
            out = F.dropout(logits.softmax(-1), p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        B, H, N, D = out.shape
        return self.out(out.transpose(1, 2).reshape(B, N, H * D))
