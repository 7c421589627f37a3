"""Local pixel-mixing blocks for the decoder, selected by `decoder.pixel_block`.

Every block maps (B, C, h, w) -> (B, C, h, w) and is applied residually. Register new ones in PIXEL_BLOCKS.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import DeformConv2d


def groups_for(c: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if c % g == 0 and c // g >= 2:
            return g
    return 1


class DeformBlock(nn.Module):
    """3x3 deformable conv (offsets from a plain 3x3 conv, zero-initialised) + GN + ReLU: the paper's block."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        self.offset = nn.Conv2d(dim, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(dim, dim, 3, padding=1)
        self.norm = nn.GroupNorm(groups_for(dim), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's deform_conv2d has no low-precision kernels: run it in float32.
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            y = self.conv(xf, self.offset(xf))
        return torch.relu(self.norm(y.to(x.dtype)))


class ConvBlock(nn.Module):
    """Depthwise 3x3 + pointwise conv + GN + ReLU: a cheap local mixer for the CPU."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.pw = nn.Conv2d(dim, dim, 1)
        self.norm = nn.GroupNorm(groups_for(dim), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.pw(self.dw(x))))


class NoBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 8):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


from vos.model.pixel_attention import ATTENTION_BLOCKS  # noqa: E402

PIXEL_BLOCKS: dict[str, type[nn.Module]] = {"deform": DeformBlock, "conv": ConvBlock, "none": NoBlock,
                                            **ATTENTION_BLOCKS}


def build_pixel_block(name: str, dim: int, heads: int) -> nn.Module:
    if name not in PIXEL_BLOCKS:
        raise ValueError(f"unknown decoder.pixel_block '{name}'; choose one of {', '.join(PIXEL_BLOCKS)}")
    return PIXEL_BLOCKS[name](dim, heads)
