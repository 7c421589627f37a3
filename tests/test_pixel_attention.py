import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vos.model.pixel_attention import (ATTENTION_BLOCKS, CrissCrossAttention, DenseAttention, EfficientAttention,
                                       InterlacedAttention, SalientAttention)
from vos.model.pixel_blocks import build_pixel_block

C, HEADS = 16, 4


@pytest.mark.parametrize("name", sorted(ATTENTION_BLOCKS))
def test_block_mixes_pixels_trains_and_agrees_in_bf16(name):
    """Each block mixes pixels (an output position depends on other input positions), passes gradients to its
    input and every parameter, treats the samples of a batch independently, and gives the fp32 result in bf16
    autocast up to bf16 rounding."""
    torch.manual_seed(0)
    block = build_pixel_block(name, C, HEADS)
    x = torch.randn(2, C, 13, 19, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    reach = _reach(block, x.detach(), (6, 9))
    assert reach[6, 9] and reach.sum() >= 5, reach.sum()
    torch.testing.assert_close(block(x.detach()[1:]), y[1:].detach(), atol=1e-5, rtol=1e-4)  # batch-independent
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = block(x.detach()).float()
    err = (z - y.detach()).norm() / y.detach().norm()
    assert err < 0.05, float(err)


def _reach(fn, x, pos):
    x = x.clone().requires_grad_(True)
    fn(x)[0, :, pos[0], pos[1]].sum().backward()
    return x.grad[0].abs().sum(0) > 0  # (h, w): input positions that reach the output position


def test_interlaced_reaches_everything_only_with_both_steps():
    torch.manual_seed(0)
    block = InterlacedAttention(C, HEADS, block=(4, 4))
    x = torch.randn(1, C, 10, 11)  # not multiples of the block size: padded
    assert _reach(block, x, (3, 5)).all()
    assert not _reach(lambda t: block(t, steps=("long",)), x, (3, 5)).all()
    assert not _reach(lambda t: block(t, steps=("short",)), x, (3, 5)).all()


def test_efficient_with_scaling_equals_dense_scaling_attention():
    torch.manual_seed(0)
    eff = EfficientAttention(C, HEADS, normalization="scaling").double()
    x = torch.randn(2, C, 9, 7, dtype=torch.float64)
    q, k, v = eff.tokens(x)
    dense = eff.merge((q @ k.transpose(-1, -2) / q.shape[-2]) @ v, 9, 7)
    torch.testing.assert_close(eff(x), dense, atol=1e-5, rtol=1e-5)


class _Largest(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("cls,linear", [(EfficientAttention, True), (DenseAttention, False)])
def test_memory_is_linear_in_positions(cls, linear):
    block = cls(C, HEADS)
    sizes = {}
    for side in (16, 32):
        with _Largest() as m, torch.no_grad():
            block(torch.randn(1, C, side, side))
        sizes[side] = m.largest
    ratio = sizes[32] / sizes[16]  # 4x the positions
    assert (ratio <= 4.01) if linear else (ratio >= 15.9)


def test_criss_cross_reach():
    torch.manual_seed(0)
    x = torch.randn(1, C, 9, 8)
    one = _reach(CrissCrossAttention(C, HEADS, recurrences=1), x, (4, 3))
    expected = torch.zeros(9, 8, dtype=torch.bool)
    expected[4, :], expected[:, 3] = True, True
    assert torch.equal(one, expected)
    assert _reach(CrissCrossAttention(C, HEADS, recurrences=2), x, (4, 3)).all()


def test_salient_attends_only_to_top_k():
    torch.manual_seed(0)
    block = SalientAttention(C, HEADS, ratio=0.1)
    x = torch.randn(1, C, 10, 10)
    x[0, :, 2, 7] *= 10  # the most salient position
    out, attn, idx = block(x, return_weights=True)
    assert attn.shape[-1] == 10 and (2 * 10 + 7) in idx[0].tolist()
    norms = x.flatten(2).pow(2).sum(1)[0]
    assert set(idx[0].tolist()) == set(norms.topk(10).indices.tolist())
    reach = _reach(block, x, (5, 5))
    assert reach.sum() <= 11 and reach[2, 7]  # the top-k positions (+ the query's own q projection)
