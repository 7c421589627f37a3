"""The short-term path: where each object was a frame ago, carried to this frame by local pixel matching.

HODOR's decoder matches this frame's pixels against object descriptors: appearance only, with no sense of where an
object was, so a look-alike can take an object over and two crossing objects can swap ids. This path adds what the
descriptors do not carry (after STCN / XMem / Cutie's pixel memory and Cutie's `last_mask`, made local):

    keys = ShortTermPath.keys(f8)                    # (B, Ck, h, w) at the path's stride, once per frame
    last = LastFrame(keys, soft masks at that stride)  # what a frame leaves for the next one
    offsets = path(keys, last, num_objects, given_frame)  # (B, I, h, w) logit offsets, added to the decoder's logits

It works at stride 16 (`stride`, the default) or 8: it says whose a region is, the descriptors' stride-4 logits draw
the boundaries. Stride 8 (STCN's) carries masks 2x finer at ~3x the path's cost and was not better (RESULTS.md, "The
short-term path at stride 8"). For every pixel of this frame, attention over the (2r + 1)^2 pixels around the same
place in the previous frame (softmax of key . key / sqrt(Ck); with `similarity` l2, of -|key - key|^2 / sqrt(Ck),
STCN's affinity: `l2_operands`) reads the previous frame's soft masks: the last masks moved by appearance. A small
convolution turns, per object, [carried mask, last mask, the other objects' carried masks, whether the object was
present a frame ago] into an offset for that object's logits. The window bounds how far an object can be carried; an
object absent a frame ago (left the frame, new) gets its offset from the same network with "absent" as input, so it is
free to come back anywhere. Its last layer starts at zero: at initialisation the model is the descriptor-only one.
`similarity` l2_given reads the given frame (below) by L2 and carries by the dot product; cosine_given reads it by the
cosine of the attention features themselves (pooled to the read's stride; x GIVEN_TEMPERATURE) and carries by the dot
product: the path's keys are a 1x1 conv learned through this small path alone, and on val10 their read of the given
mask into later frames matched it worse (IoU 0.69) than the features' cosine did (0.79). The keys of a frame then carry
both, [learned keys, unit features] (`ShortTermPath.keys`), and the features' gradients flow through the read.

With `given_topk` > 0 it also reads the GIVEN frame, at stride 16 whatever `stride` (STCN / XMem's memory read,
global, after Cutie): every pixel of this frame attends to its `given_topk` best-matching pixels anywhere in the
frame whose masks were given (`given_frame`, a LastFrame too) and reads their masks: what an object looked like
where a person drew it, wherever it is now. What the local window cannot see (an object back from outside the frame,
a jump) and what the descriptors blur (one mean per object). At inference: every frame where masks were given, side
by side (`LastFrame.concat`); in a training cycle, the first source of a node (the annotated frame going forward,
the turning frame coming back, so the cycle's end never reads the ground truth). Two more inputs of the fusion,
[given read, the other objects' given read], through their own first layer, zero at initialisation: a model trained
without them starts unchanged.

With `distance`, one more input: each pixel's distance to the nearest pixel the object held a frame ago (L1, in
the path's pixels, over the map's longer side, at most 1; 1 where it held none). The window and the fusion's
receptive field see ~5 pixels each way, so beyond that a far pixel looks the same to the path whether it is next to
the object or across the frame; a look-alike far away then takes the object's id on appearance alone. This is what
the hand-set locality rule (vos.inference.locality) gave at inference, made an input the path learns to weigh in
training and inference alike. Its own first layer, zero at initialisation.
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
RIDGE_LAMBDA = 0.003  # given_ridge's regularisation, x the mean diagonal of X^T X (0.001-0.01 read alike on val10)
GIVEN_TEMPERATURE = 20.0  # similarity cosine_given: the softmax over a pixel's top-k reads cos x this (IoU level for 5-50)
READ_FLOOR = 0.05  # short_term.read_prior: log(read + this), so a read of 0 costs an object at most 3 x the gain


@dataclass
class LastFrame:
    keys: torch.Tensor  # (B, Ck, h, w) the frame's keys at the path's stride
    masks: torch.Tensor  # (B, 1 + I, h, w) its final soft masks (background first) at the same stride

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


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, radius: int, tile: int = 6) -> torch.Tensor:
    """q, k (B, Ck, h, w); v (B, V, h, w) -> (B, V, h, w): every pixel of q reads v over the pixels of k at most
    `radius` away in both directions (softmax of q . k / sqrt(Ck)).

    By tiles: each `tile` x `tile` block of q attends to the (tile + 2 radius)^2 pixels of k around it, pixels outside
    a query's own window or outside the frame masked out; the same result as dense attention with the far pixels
    masked, at a fraction of its cost once the map is large (stride 8: 36 x 64 at 288 x 512, ~3x faster forward,
    ~5x forward + backward on the CPU), while the batched matrix products stay large enough to be fast."""
    B, C, h, w = q.shape
    V, R = v.shape[1], tile + 2 * radius
    nh, nw, pad = _tiles(h, w, radius, tile)
    L = nh * nw
    qt = F.pad(q * (1 / math.sqrt(C)), (0, nw * tile - w, 0, nh * tile - h)).view(B, C, nh, tile, nw, tile)
    qt = qt.permute(0, 2, 4, 3, 5, 1).reshape(B * L, tile * tile, C)

    def windows(x: torch.Tensor) -> torch.Tensor:  # (B, X, h, w) -> (B * L, X, R * R): each tile's key window
        return F.unfold(F.pad(x, pad), R, stride=tile).view(B, x.shape[1], R * R, L).permute(0, 3, 1, 2) \
            .reshape(B * L, x.shape[1], R * R)

    a = torch.bmm(qt, windows(k)).float().view(B, L, tile * tile, R * R)
    a = a.masked_fill(_outside(h, w, radius, tile, q.device), NEG).softmax(-1).view(B * L, tile * tile, R * R)
    out = torch.bmm(windows(v), a.to(v.dtype).transpose(1, 2).contiguous())  # (B * L, V, tile * tile)
    out = out.view(B, nh, nw, V, tile, tile).permute(0, 3, 1, 4, 2, 5).reshape(B, V, nh * tile, nw * tile)
    return out[..., :h, :w]


def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int) -> torch.Tensor:
    """q (B, Ck, h, w), k (B, Ck, h', w'), v (B, V, h', w') -> (B, V, h, w): every pixel of q reads v over its `topk`
    best-matching pixels of k, anywhere (softmax of their q . k / sqrt(Ck); STCN's top-k memory read)."""
    B, V = v.shape[:2]
    a = torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2)).float() / math.sqrt(q.shape[1])  # (B, hw, h'w')
    vals, idx = a.topk(min(topk, a.shape[-1]), -1)  # (B, hw, K)
    read = v.flatten(2).gather(2, idx.flatten(1)[:, None].expand(-1, V, -1)).view(B, V, *idx.shape[1:])
    return (read * vals.softmax(-1).to(v.dtype)[:, None]).sum(-1).view(B, V, *q.shape[-2:])


def l2_operands(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Ck, ...), k (B, Ck, ...) -> (q', k') with Ck + 1 channels whose dot product is 2 q . k - |k|^2: the
    negative squared distance -|q - k|^2 up to |q|^2, a term constant per query that a softmax or a top-k over the keys
    ignores (STCN's L2 affinity). Either attention above then reads by distance: a key of large norm no longer wins
    every query."""
    return (torch.cat([2 * q, -torch.ones_like(q[:, :1])], 1),
            torch.cat([k, k.float().pow(2).sum(1, keepdim=True).to(k.dtype)], 1))


def cosine_operands(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, C, ...), k (B, C, ...) -> (q', k') at unit norm, q' x GIVEN_TEMPERATURE: their dot product is the cosine
    sharpened for the softmax (similarity cosine_given)."""
    return F.normalize(q, dim=1) * GIVEN_TEMPERATURE, F.normalize(k, dim=1)


def _tiles(h: int, w: int, radius: int, tile: int) -> tuple[int, int, tuple[int, int, int, int]]:
    """`local_attention`'s tiling of an h x w map: tile rows, tile columns, and the padding (left, right, top, bottom)
    that gives every tile its whole (tile + 2 radius)^2 window."""
    nh, nw = -(-h // tile), -(-w // tile)
    return nh, nw, (radius, radius + nw * tile - w, radius, radius + nh * tile - h)


@functools.lru_cache(maxsize=8)
def _outside(h: int, w: int, radius: int, tile: int, device: torch.device) -> torch.Tensor:
    """(L, tile^2, (tile + 2 radius)^2) bool for `local_attention`'s L tiles: key pixels of a tile's window that are
    more than `radius` from the query pixel in either direction, or outside the frame. Cached: every frame of a
    video asks for the same one. A normal tensor even when first asked for under inference_mode: training may reuse
    it."""
    R = tile + 2 * radius
    pad = _tiles(h, w, radius, tile)[2]
    with torch.inference_mode(False):
        frame = F.pad(torch.ones(1, 1, h, w, device=device), pad)
        inside = F.unfold(frame, R, stride=tile)[0].T > 0  # (L, R * R)
        t, r = torch.arange(tile, device=device), torch.arange(R, device=device)
        qy, qx = t.repeat_interleave(tile), t.repeat(tile)
        ky, kx = r.repeat_interleave(R), r.repeat(R)
        far = ((qy[:, None] + radius - ky).abs() > radius) | ((qx[:, None] + radius - kx).abs() > radius)
        return far | ~inside[:, None]


class ShortTermPath(nn.Module):
    def __init__(self, channels: int, key_channels: int, radius: int, hidden: int = 16, given_topk: int = 0,
                 stride: int = 16, distance: bool = False, similarity: str = "dot", given_ridge: bool = False,
                 read_prior: float = 0.0):
        super().__init__()
        self.radius, self.given_topk, self.stride = radius, given_topk, stride
        self.l2_carry, self.l2_given = similarity == "l2", similarity in ("l2", "l2_given")
        self.cosine_given = similarity == "cosine_given"
        self.unit_features = self.cosine_given or given_ridge  # keys() also carries the features at unit norm
        self.key_channels = key_channels
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.fuse = nn.Sequential(nn.Conv2d(4, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(hidden, 1, 1))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)
        if given_topk:
            self.given_in = nn.Conv2d(2, hidden, 3, padding=1, bias=False)
            nn.init.zeros_(self.given_in.weight)
        self.ridge_in = None
        if given_ridge:  # [the object's ridge score, the other objects' summed, the background's]
            self.ridge_in = nn.Conv2d(3, hidden, 3, padding=1, bias=False)
            nn.init.zeros_(self.ridge_in.weight)
        if read_prior and not given_topk:
            raise ValueError("short_term.read_prior needs the given-frame read: set short_term.given_topk > 0")
        # the read's direct term: gain * log(read + READ_FLOOR) added to each object's offsets
        self.read_gain = nn.Parameter(torch.tensor(float(read_prior))) if read_prior else None
        self.distance_in = nn.Conv2d(1, hidden, 3, padding=1, bias=False) if distance else None
        if distance:
            nn.init.zeros_(self.distance_in.weight)

    def keys(self, f8: torch.Tensor) -> torch.Tensor:
        """(B, C, H/8, W/8) attention features -> (B, Ck, H/stride, W/stride) keys; with cosine_given or given_ridge
        (B, Ck + C, ...): the learned keys, then the features at unit norm (what the given-frame reads match)."""
        f = f8 if self.stride == 8 else F.avg_pool2d(f8, self.stride // 8)
        if self.unit_features:
            return torch.cat([self.key(f), F.normalize(f, dim=1)], 1)
        return self.key(f)

    def masks(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, 1 + I, H/4, W/4) probabilities -> the same at the path's stride, by area averaging."""
        return F.avg_pool2d(probs, self.stride // 4)

    def read_given(self, keys: torch.Tensor, given_frame: LastFrame, num_objects: int) -> torch.Tensor:
        """The global read of the given frame (`given_topk`): (B, I, H/16, W/16), each pixel of this frame's keys
        reading the given masks of its top-k matches there. At stride 16 whatever the path's stride: it says whose a
        region is, not where its edge is, at 1/16 of the cost at stride 8 (the keys are a 1x1 conv of the features:
        pooled keys are the stride-16 path's keys). Training's cycles.read_loss supervises it directly."""
        pool = 16 // self.stride
        q, gk = F.avg_pool2d(keys, pool), F.avg_pool2d(given_frame.keys.to(keys.dtype), pool)
        if self.cosine_given:
            q, gk = cosine_operands(q[:, self.key_channels:], gk[:, self.key_channels:])
        else:
            q, gk = q[:, :self.key_channels], gk[:, :self.key_channels]
            if self.l2_given:
                q, gk = l2_operands(q, gk)
        return topk_attention(q, gk, F.avg_pool2d(_objects(given_frame, num_objects, keys.dtype), pool),
                              self.given_topk)

    def read_ridge(self, keys: torch.Tensor, given_frame: LastFrame, num_objects: int) -> torch.Tensor:
        """given_ridge: scores (B, 1 + I, H/16, W/16) for [background, objects] from a ridge regression fit on the given
        frame(s)' unit features (pooled to stride 16, plus a constant) to their masks, in closed form and in fp32:
        W = (X^T X + lambda I)^-1 X^T Y. Differentiable: training shapes the features for it."""
        pool = 16 // self.stride
        c = self.key_channels
        q, g = F.avg_pool2d(keys[:, c:], pool), F.avg_pool2d(given_frame.keys[:, c:].to(keys.dtype), pool)
        y = F.avg_pool2d(torch.cat([given_frame.masks[:, :1], _objects(given_frame, num_objects, keys.dtype)], 1), pool)
        with torch.autocast(keys.device.type, enabled=False):
            x = F.pad(g.float().flatten(2).transpose(1, 2), (0, 1), value=1.0)  # (B, N, C + 1)
            a = x.transpose(1, 2) @ x
            a = a + RIDGE_LAMBDA * a.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(
                a.shape[-1], device=a.device)
            w = torch.linalg.solve(a, x.transpose(1, 2) @ y.float().flatten(2).transpose(1, 2))  # (B, C + 1, 1 + I)
            xq = F.pad(q.float().flatten(2).transpose(1, 2), (0, 1), value=1.0)
            return (xq @ w).transpose(1, 2).reshape(q.shape[0], -1, *q.shape[-2:])

    def forward(self, keys: torch.Tensor, last: LastFrame, num_objects: int,
                given_frame: LastFrame | None = None) -> torch.Tensor:
        """Logit offsets (B, I, h, w) for the I objects of this frame. Objects beyond those of `last` (added since)
        count as absent a frame ago. given_frame: the frame whose masks were given (read with `given_topk` > 0; None: no
        such frame, or it is this one or the last one's source, and the read is zero)."""
        prev = _objects(last, num_objects, keys.dtype)
        q, k = keys[:, :self.key_channels], last.keys[:, :self.key_channels].to(keys.dtype)
        if self.l2_carry:
            q, k = l2_operands(q, k)
        carried = local_attention(q, k, prev, self.radius)  # (B, I, h, w)
        others = carried.sum(1, keepdim=True) - carried
        present = prev.flatten(2).amax(-1)[..., None, None].expand_as(prev)
        x = torch.stack([carried, prev, others, present], 2)  # (B, I, 4, h, w)
        B, I, _, h, w = x.shape
        hidden = self.fuse[0](x.flatten(0, 1))
        prior = None
        if self.given_topk and given_frame is not None:
            read = self.read_given(keys, given_frame, num_objects)
            if self.stride < 16:
                read = F.interpolate(read, size=(h, w), mode="bilinear", align_corners=False)
            hidden = hidden + self.given_in(torch.stack([read, read.sum(1, keepdim=True) - read], 2).flatten(0, 1))
            if self.read_gain is not None:
                prior = self.read_gain * torch.log(read.float() + READ_FLOOR)  # a read is an average of masks: >= 0
        if self.ridge_in is not None and given_frame is not None:
            r = self.read_ridge(keys, given_frame, num_objects)
            if self.stride < 16:
                r = F.interpolate(r, size=(h, w), mode="bilinear", align_corners=False)
            obj = r[:, 1:]
            x = torch.stack([obj, obj.sum(1, keepdim=True) - obj, r[:, :1].expand_as(obj)], 2)
            hidden = hidden + self.ridge_in(x.flatten(0, 1).to(hidden.dtype))
        if self.distance_in is not None:
            hidden = hidden + self.distance_in(distance_to(prev).flatten(0, 1)[:, None])
        out = self.fuse[1:](hidden).view(B, I, h, w)
        if prior is not None:
            out = out + prior.to(out.dtype)
        return out


def distance_to(masks: torch.Tensor) -> torch.Tensor:
    """(B, I, h, w) soft masks -> (B, I, h, w): each pixel's L1 distance to the nearest pixel above 0.5, over the
    longer side, at most 1 (1 everywhere for an empty mask). Exact, as two 1-D min-plus passes (rows, then columns):
    O(h w (h + w)) per mask, no host sync."""
    h, w = masks.shape[-2:]
    far = float(h + w)
    held = masks.detach().float() > 0.5
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    # along each row: distance to the nearest held pixel of that row
    row = ((xs[:, None] - xs[None, :]).abs() + far * (~held)[..., None, :]).amin(-1)  # (B, I, h, w)
    # then across rows: min over rows y' of |y - y'| + row[y']
    d = ((ys[:, None, None] - ys[None, :, None]).abs() + row[..., None, :, :]).amin(-2)  # (B, I, h, w)
    return (d / max(h, w)).clamp(max=1.0).to(masks.dtype)


def _objects(frame: LastFrame, num_objects: int, dtype: torch.dtype) -> torch.Tensor:
    """A LastFrame's object masks (B, num_objects, h, w); objects added since it are absent (zero)."""
    m = frame.masks[:, 1:].to(dtype)
    if m.shape[1] < num_objects:
        m = F.pad(m, (0, 0, 0, 0, 0, num_objects - m.shape[1]))
    return m[:, :num_objects]
