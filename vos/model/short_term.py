"""The short-term path: where each object was a frame ago, carried to this frame by local pixel matching.

HODOR's decoder matches this frame's pixels against object descriptors: appearance only, with no sense of where an
object was, so a look-alike can take an object over and two crossing objects can swap ids. This path adds what the
descriptors do not carry (after STCN / XMem / Cutie's pixel memory and Cutie's `last_mask`, made local):

    keys = ShortTermPath.keys(f8)                    # (B, Ck, h, w) at stride 16, once per frame, with the features
    last = LastFrame(keys, soft masks at stride 16)  # what a frame leaves for the next one
    offsets = path(keys, last, num_objects, given_frame)  # (B, I, h, w) logit offsets, added to the decoder's logits

It works at stride 16: it says whose a region is, the descriptors' stride-4 logits draw the boundaries, and its
attention stays cheap. For every pixel of this frame, attention over the (2r + 1)^2 pixels around the same place
in the previous frame
(softmax of key . key / sqrt(Ck)) reads the previous frame's soft masks: the last masks moved by appearance. A small
convolution turns, per object, [carried mask, last mask, the other objects' carried masks, whether the object was
present a frame ago] into an offset for that object's logits. The window bounds how far an object can be carried; an
object absent a frame ago (left the frame, new) gets its offset from the same network with "absent" as input, so it
is free to come back anywhere. Its last layer starts at zero: at initialisation the model is the descriptor-only one.

With `given_topk` > 0 it also reads the GIVEN frame (STCN / XMem's memory read, global, after Cutie): every pixel of
this frame attends to its `given_topk` best-matching pixels anywhere in the frame whose masks were given
(`given_frame`, a LastFrame too) and reads their masks: what an object looked like where a person drew it, wherever
it is now. What the local window cannot see (an object back from outside the frame, a jump) and what the
descriptors blur (one mean per object). At inference: every frame where masks were given, side by side
(`LastFrame.concat`); in a training cycle, the first source of a node (the annotated frame going forward, the
turning frame coming back, so the cycle's end never reads the ground truth). Two more inputs of the fusion, [given read, the other objects' given
read], through their own first layer, zero at initialisation: a model trained without them starts unchanged.
The same step runs in training (the previous node of a cycle) and inference (the previous frame): vos.model.hodor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e4


@dataclass
class LastFrame:
    keys: torch.Tensor  # (B, Ck, h, w) the frame's stride-16 keys
    masks: torch.Tensor  # (B, 1 + I, h, w) its final soft masks (background first) at stride 16

    @staticmethod
    def concat(frames: list["LastFrame"], num_objects: int) -> "LastFrame | None":
        """Several frames as one, side by side (what the global read sees as one set of pixels); objects added
        after a frame are absent (zero) in it. None for no frames."""
        if not frames:
            return None
        if len(frames) == 1:
            return frames[0]
        masks = [F.pad(f.masks, (0, 0, 0, 0, 0, 1 + num_objects - f.masks.shape[1])) for f in frames]
        return LastFrame(torch.cat([f.keys for f in frames], -1), torch.cat(masks, -1))


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, radius: int) -> torch.Tensor:
    """q, k (B, Ck, h, w); v (B, V, h, w) -> (B, V, h, w): every pixel of q reads v over the pixels of k at most
    `radius` away in both directions (softmax of q . k / sqrt(Ck)).

    Dense attention with the far pixels masked out: at stride 16 the maps are small (18 x 32 at 288 x 512), and two
    batched matrix products are ~10x faster on the CPU than gathering each pixel's window (unfold)."""
    a = _scores(q, k).masked_fill(_far(*q.shape[-2:], radius, q.device), NEG).softmax(-1)
    return _read(a, v, q.shape[-2:])


def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int) -> torch.Tensor:
    """q (B, Ck, h, w), k (B, Ck, h', w'), v (B, V, h', w') -> (B, V, h, w): every pixel of q reads v over its `topk`
    best-matching pixels of k, anywhere (softmax of their q . k / sqrt(Ck); STCN's top-k memory read)."""
    a = _scores(q, k)
    vals, idx = a.topk(min(topk, a.shape[-1]), -1)
    return _read(torch.zeros_like(a).scatter_(-1, idx, vals.softmax(-1)), v, q.shape[-2:])


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, hw, h'w') fp32 attention logits q . k / sqrt(Ck) between every pixel of q and every pixel of k."""
    return torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2)).float() / math.sqrt(q.shape[1])


def _read(a: torch.Tensor, v: torch.Tensor, size) -> torch.Tensor:
    """Attention weights a (B, hw, h'w') over v (B, V, h', w') -> (B, V, h, w)."""
    return torch.bmm(v.flatten(2), a.to(v.dtype).transpose(1, 2)).view(v.shape[0], v.shape[1], *size)


@functools.lru_cache(maxsize=8)
def _far(h: int, w: int, radius: int, device: torch.device) -> torch.Tensor:
    """(hw, hw) bool: pixel pairs more than `radius` apart in either direction. Cached: every frame of a video asks
    for the same one. A normal tensor even when first asked for under inference_mode: training may reuse it."""
    with torch.inference_mode(False):
        ys = torch.arange(h, device=device).repeat_interleave(w)
        xs = torch.arange(w, device=device).repeat(h)
        return ((ys[:, None] - ys[None]).abs() > radius) | ((xs[:, None] - xs[None]).abs() > radius)


class ShortTermPath(nn.Module):
    def __init__(self, channels: int, key_channels: int, radius: int, hidden: int = 16, given_topk: int = 0):
        super().__init__()
        self.radius, self.given_topk = radius, given_topk
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.fuse = nn.Sequential(nn.Conv2d(4, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(hidden, 1, 1))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)
        if given_topk:
            self.given_in = nn.Conv2d(2, hidden, 3, padding=1, bias=False)
            nn.init.zeros_(self.given_in.weight)

    def keys(self, f8: torch.Tensor) -> torch.Tensor:
        """(B, C, H/8, W/8) attention features -> (B, Ck, H/16, W/16) keys."""
        return self.key(F.avg_pool2d(f8, 2))

    def forward(self, keys: torch.Tensor, last: LastFrame, num_objects: int,
                given_frame: LastFrame | None = None) -> torch.Tensor:
        """Logit offsets (B, I, h, w) for the I objects of this frame. Objects beyond those of `last` (added since)
        count as absent a frame ago. given_frame: the frame whose masks were given (read with `given_topk` > 0; None: no
        such frame, or it is this one or the last one's source, and the read is zero)."""
        prev = _objects(last, num_objects, keys.dtype)
        carried = local_attention(keys, last.keys.to(keys.dtype), prev, self.radius)  # (B, I, h, w)
        others = carried.sum(1, keepdim=True) - carried
        present = prev.flatten(2).amax(-1)[..., None, None].expand_as(prev)
        x = torch.stack([carried, prev, others, present], 2)  # (B, I, 4, h, w)
        B, I, _, h, w = x.shape
        hidden = self.fuse[0](x.flatten(0, 1))
        if self.given_topk and given_frame is not None:
            read = topk_attention(keys, given_frame.keys.to(keys.dtype), _objects(given_frame, num_objects, keys.dtype),
                                  self.given_topk)
            hidden = hidden + self.given_in(torch.stack([read, read.sum(1, keepdim=True) - read], 2).flatten(0, 1))
        return self.fuse[1:](hidden).view(B, I, h, w)


def _objects(frame: LastFrame, num_objects: int, dtype: torch.dtype) -> torch.Tensor:
    """A LastFrame's object masks (B, num_objects, h, w); objects added since it are absent (zero)."""
    m = frame.masks[:, 1:].to(dtype)
    if m.shape[1] < num_objects:
        m = F.pad(m, (0, 0, 0, 0, 0, num_objects - m.shape[1]))
    return m[:, :num_objects]
