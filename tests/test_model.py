import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vos.config import ModelConfig, load_config
from vos.model import HODOR, SoftMaskedAttention, default_alphas, lite0_classifier, logits_to_probs, merged_logits
from vos.model.attention import attention_bias, split_heads
from vos.model.backbone import BackboneError
from vos.utils import VosError


def tiny_cfg(**over):
    items = ["channels=32", "mask_channels=8", "heads=4", "encoder.layers=1", "decoder.layers=1",
             "backbone_weights=null"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(ModelConfig, None, items)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HODOR(tiny_cfg()).eval()


def test_alpha_init():
    assert default_alphas(8) == [32, 32, 16, 16, 8, 8, 4, 4]
    assert default_alphas(4) == [32, 16, 8, 4] and default_alphas(1) == [32]
    assert sorted(default_alphas(16), reverse=True) == default_alphas(16)


def _attn_case(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 5, 16, generator=g, dtype=dtype), torch.randn(2, 11, 16, generator=g, dtype=dtype)
    m = torch.rand(2, 5, 11, generator=g, dtype=dtype)
    return q, k, m


def test_soft_masked_attention_sdpa_equals_explicit():
    torch.manual_seed(0)
    a = SoftMaskedAttention(16, 4)
    q, k, m = _attn_case()
    pad = torch.zeros(2, 11, dtype=torch.bool)
    pad[1, -3:] = True
    torch.testing.assert_close(a(q, k, k, m, pad), a(q, k, k, m, pad, explicit=True), atol=1e-5, rtol=1e-5)


def test_soft_mask_of_ones_is_standard_attention():
    torch.manual_seed(0)
    a = SoftMaskedAttention(16, 4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.in_proj_weight.data = torch.cat([a.q.weight, a.k.weight, a.v.weight]).data
    ref.in_proj_bias.data = torch.cat([a.q.bias, a.k.bias, a.v.bias]).data
    ref.out_proj.weight.data, ref.out_proj.bias.data = a.out.weight.data, a.out.bias.data
    q, k, _ = _attn_case()
    torch.testing.assert_close(a(q, k, k, torch.ones(2, 5, 11)), ref(q, k, k, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_large_alpha_is_hard_masked_attention():
    torch.manual_seed(0)
    a = SoftMaskedAttention(16, 4, alphas=[1e4] * 4)
    q, k, m = _attn_case()
    hard = (m > 0.5).float()
    hard[..., 0] = 1  # every query keeps at least one key
    out = a(q, k, k, hard)
    a_plain = SoftMaskedAttention(16, 4)
    a_plain.load_state_dict({**a.state_dict(), "alpha": torch.zeros(4)})
    with torch.no_grad():
        qs, ks, vs = split_heads(a.q(q), a.heads), split_heads(a.k(k), a.heads), split_heads(a.v(k), a.heads)
        ref = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=hard.bool()[:, None])
        ref = a.out(ref.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_gradients_wrt_mask_and_alpha_match_finite_differences():
    torch.manual_seed(0)
    a = SoftMaskedAttention(8, 2, alphas=[2.0, 0.5]).double()
    q, k, m = _attn_case(torch.float64)
    q, k = q[:1, :2, :8], k[:1, :4, :8]
    m = m[:1, :2, :4].clone().requires_grad_(True)
    out = a(q, k, k, m)
    gm, ga = torch.autograd.grad(out.sum(), [m, a.alpha])
    assert gm.abs().sum() > 0 and ga.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda mm: a(q, k, k, mm), (m,))
    alpha = a.alpha.detach().clone().requires_grad_(True)

    def f(al):
        qs, ks, vs = split_heads(a.q(q), a.heads), split_heads(a.k(k), a.heads), split_heads(a.v(k), a.heads)
        logits = qs @ ks.transpose(-1, -2) / np.sqrt(4) + attention_bias(m.detach(), al, None, torch.float64)
        return a.out((logits.softmax(-1) @ vs).transpose(1, 2).reshape(1, 2, 8))

    assert torch.autograd.gradcheck(f, (alpha,))


@pytest.mark.parametrize("objects,T,size", [(1, 1, (64, 96)), (2, 3, (70, 99)), (4, 2, (33, 47))])
def test_shapes_through_the_model(model, objects, T, size):
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        f = model.features(x)
        masks = (torch.rand(1, objects, *size) > 0.7).float()
        d = model.encode(f, model.masks_to_s4(masks, f))
        assert d.shape == (1, model.num_bg + objects, 32)
        desc = d[:, None].expand(1, T, -1, -1)
        lg = model.decode(f, desc, torch.ones(desc.shape[:3], dtype=torch.bool))
        assert lg.shape[1] == 1 + model.num_bg + objects and lg.dtype == torch.float32
        full = model.upsample(lg, f)
        assert full.shape[-2:] == size
        p = logits_to_probs(lg, model.num_bg)
        torch.testing.assert_close(p.sum(1), torch.ones_like(p[:, 0]))
        assert merged_logits(lg, model.num_bg).shape[1] == 1 + objects
        again = model.encode(f, p[:, 1:])
        assert again.shape == d.shape and torch.isfinite(again).all()
        # T copies of one frame's descriptors decode like that frame alone (attention over duplicated keys, and a
        # max over identical frames, change nothing): the frames are stacked and reduced along the right axes
        one = model.decode(f, d[:, None], torch.ones(1, 1, d.shape[1], dtype=torch.bool))
        torch.testing.assert_close(lg, one, atol=1e-4, rtol=1e-4)


def test_given_masks_resample_to_stride_4_and_back(model):
    """masks_to_s4 is an area average onto the stride-4 grid of the padded frame, and upsample maps back to the
    frame: a block-aligned mask survives the round trip but for its four corner pixels (bilinear rounds them);
    forced masks own their pixels."""
    from vos.model import force_masks

    size = (72, 104)  # padded to 96 x 128 inside the model
    with torch.no_grad():
        f = model.features(torch.rand(1, 3, *size))
        mask = torch.zeros(1, 1, *size)
        mask[..., 8:40, 20:64] = 1
        s4 = model.masks_to_s4(mask, f)
        assert s4.shape[-2:] == (24, 32) and s4.sum() == 8 * 11 and s4[..., 18:, :].sum() == 0  # padding empty
        back = model.upsample(s4, f)
        wrong = ((back > 0.5) != (mask > 0.5))[0, 0].nonzero().tolist()
        assert back.shape[-2:] == size and wrong == [[8, 20], [8, 63], [39, 20], [39, 63]]
        probs = torch.full((1, 3, 24, 32), 1 / 3)
        forced = force_masks(probs, s4.expand(1, 2, -1, -1), torch.tensor([[True, False]]))
        assert torch.equal(forced[0, 1], s4[0, 0]) and (forced[0, 2][s4[0, 0] == 1] == 0).all()
        torch.testing.assert_close(forced.sum(1), torch.ones(1, 24, 32))


def test_empty_and_tiny_masks(model):
    x = torch.rand(1, 3, 64, 64)
    masks = torch.zeros(1, 2, 64, 64)
    masks[0, 1, 10, 10] = 1  # one pixel: vanishes at stride 8
    with torch.no_grad():
        f = model.features(x)
        d = model.encode(f, model.masks_to_s4(masks, f))
        moved = masks.clone()
        moved[0, 1, 10, 10], moved[0, 1, 50, 50] = 0, 1
        d_moved = model.encode(f, model.masks_to_s4(moved, f))
    assert torch.isfinite(d).all() and d[0, model.num_bg:].abs().sum(-1).min() > 0
    # a one-pixel object still has a descriptor of its own: where it is (its most likely pixel) decides it
    assert (d[0, -1] - d_moved[0, -1]).norm() > 0.1 * d[0, -1].norm()


def test_object_permutation_equivariance_and_padding(model):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 80)
    masks = (torch.rand(2, 3, 64, 80) > 0.6).float()
    with torch.no_grad():
        f = model.features(x)
        d = model.encode(f, model.masks_to_s4(masks, f))
        valid = torch.ones(2, 1, d.shape[1], dtype=torch.bool)
        lg = model.decode(f, d[:, None], valid)
        perm = torch.tensor([2, 0, 1])
        dp = model.encode(f, model.masks_to_s4(masks[:, perm], f))
        lgp = model.decode(f, dp[:, None], valid)
        nb = 1 + model.num_bg
        torch.testing.assert_close(lgp[:, nb:], lg[:, nb:][:, perm], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lgp[:, :nb], lg[:, :nb], atol=1e-4, rtol=1e-4)
        # a padded 4th object (with garbage mask) changes nothing for the real ones
        padded = torch.cat([masks, torch.rand(2, 1, 64, 80)], 1)
        ov = torch.tensor([[True, True, True, False]] * 2)
        dpad = model.encode(f, model.masks_to_s4(padded, f), ov)
        vpad = torch.cat([torch.ones(2, 1, model.num_bg, dtype=torch.bool), ov[:, None]], 2)
        lgpad = model.decode(f, dpad[:, None], vpad)
        torch.testing.assert_close(lgpad[:, :-1], lg, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_forward_backward_on_two_frames():
    torch.manual_seed(0)
    m = HODOR(tiny_cfg(**{"decoder.pixel_block": "deform"})).train()
    x = torch.rand(2, 3, 64, 64)
    masks = (torch.rand(1, 2, 64, 64) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = m.features(x)
        f0 = type(f)(f.f4[:1], f.f8[:1], f.size)
        f1 = type(f)(f.f4[1:], f.f8[1:], f.size)
        d = m.encode(f0, m.masks_to_s4(masks, f0))
        lg = m.decode(f1, d[:, None], torch.ones(1, 1, d.shape[1], dtype=torch.bool))
        loss = F.cross_entropy(m.upsample(merged_logits(lg, m.num_bg), f1).float(), masks.argmax(1))
    loss.backward()
    grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
    m.zero_grad()
    f = m.features(x)  # the same in fp32: bf16 changes the numbers by rounding only
    f0, f1 = type(f)(f.f4[:1], f.f8[:1], f.size), type(f)(f.f4[1:], f.f8[1:], f.size)
    d = m.encode(f0, m.masks_to_s4(masks, f0))
    lg = m.decode(f1, d[:, None], torch.ones(1, 1, d.shape[1], dtype=torch.bool))
    loss32 = F.cross_entropy(m.upsample(merged_logits(lg, m.num_bg), f1), masks.argmax(1))
    loss32.backward()
    grads32 = [p.grad for p in m.parameters() if p.grad is not None]
    assert len(grads) == len(grads32) > 10 and abs(float(loss) - float(loss32)) < 0.05 * float(loss32)
    flat, flat32 = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in grads32])
    assert F.cosine_similarity(flat, flat32, dim=0) > 0.9


def test_missing_weight_file_is_an_error():
    with pytest.raises(BackboneError, match="not found"):
        HODOR(tiny_cfg(backbone="resnet18", backbone_weights="/nonexistent.pth"))
    with pytest.raises(BackboneError, match="only for lite0"):
        HODOR(tiny_cfg(backbone="resnet18", backbone_weights="package"))


@pytest.mark.parametrize("backbone", ["resnet18", "swin_t"])
def test_torchvision_backbones_random_init(backbone):
    torch.manual_seed(0)
    m = HODOR(tiny_cfg(backbone=backbone)).eval()
    x = torch.rand(1, 3, 64, 64)
    y = x.clone()
    y[..., :, 32:] = 0  # change the right half only
    with torch.no_grad():
        f, g = m.features(x), m.features(y)
    assert f.f8.shape == (1, 32, 8, 8) and f.f4.shape == (1, 8, 16, 16)
    change = (f.f4 - g.f4).abs().mean((0, 1, 2))  # per stride-4 column
    assert change[12:].mean() > 1.5 * change[:2].mean()  # features stay (mostly) where their pixels are


@pytest.mark.parametrize("name,expected", [("chelsea", range(281, 286)), ("coffee", [504, 967, 968])])
def test_packaged_lite0_weights_classify_real_photos(name, expected):
    skimage_data = pytest.importorskip("skimage.data")
    img = getattr(skimage_data, name)()
    m = lite0_classifier("package").eval()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = m((x - 0.5) / 0.5).topk(5).indices[0].tolist()
    assert top[0] in expected, top


@pytest.mark.parametrize("radius,tile", [(1, 6), (1, 2), (2, 3)])
def test_local_attention_reads_only_its_window(radius, tile):
    """Whatever the tiling (one tile, or ragged tiles cut by the frame's edge), every pixel reads exactly its own
    window."""
    from vos.model.short_term import local_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 8, 5, 7, generator=g), torch.randn(2, 8, 5, 7, generator=g), torch.rand(2, 3, 5, 7, generator=g)
    out = local_attention(q, k, v, radius, tile)
    for b, y, x in [(0, 0, 0), (1, 2, 3), (0, 4, 6), (1, 4, 0), (0, 3, 5), (1, 1, 2)]:
        ys, xs = slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1)
        keys, vals = k[b, :, ys, xs].flatten(1), v[b, :, ys, xs].flatten(1)
        a = (q[b, :, y, x] @ keys / 8 ** 0.5).softmax(0)
        torch.testing.assert_close(out[b, :, y, x], vals @ a)


def test_topk_attention_reads_only_the_best_matches_anywhere():
    from vos.model.short_term import topk_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 8, 3, 4, generator=g), torch.randn(2, 8, 5, 7, generator=g), torch.rand(2, 3, 5, 7, generator=g)
    out = topk_attention(q, k, v, 5)
    assert out.shape == (2, 3, 3, 4)
    for b, y, x in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        s = q[b, :, y, x] @ k[b].flatten(1) / 8 ** 0.5
        top = s.topk(5).indices
        torch.testing.assert_close(out[b, :, y, x], v[b].flatten(1)[:, top] @ s[top].softmax(0))
    # a far pixel that matches best is read: the window of the local read would not reach it
    k2 = torch.zeros(1, 8, 5, 7)
    k2[0, :, 4, 6] = 10 * q[0, :, 0, 0] / q[0, :, 0, 0].norm()
    v2 = torch.zeros(1, 1, 5, 7)
    v2[0, 0, 4, 6] = 1
    assert topk_attention(q[:1], k2, v2, 3)[0, 0, 0, 0] > 0.9


def test_l2_affinity_reads_the_nearest_key_where_a_long_key_wins_the_dot_product():
    """short_term.similarity=l2: q' . k' = -|q - k|^2 + |q|^2, so a read ranks keys by distance; a key of large norm
    pointing roughly the query's way wins the dot product's top-k (the crossing composite's rider read the swing
    girl's mask from the given frame) but not the distance."""
    from vos.model.short_term import l2_operands, local_attention, topk_attention

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 8, 3, 4, generator=g), torch.randn(2, 8, 5, 7, generator=g)
    q2, k2 = l2_operands(q, k)
    assert q2.shape == (2, 9, 3, 4) and k2.shape == (2, 9, 5, 7)
    dist = torch.cdist(q.flatten(2).transpose(1, 2), k.flatten(2).transpose(1, 2)) ** 2  # (B, 12, 35)
    prod = torch.bmm(q2.flatten(2).transpose(1, 2), k2.flatten(2))
    torch.testing.assert_close(prod, -dist + q.flatten(2).pow(2).sum(1)[..., None], atol=1e-4, rtol=1e-4)

    query = torch.tensor([1.0, 0.0])[None, :, None, None]  # one pixel
    keys = torch.zeros(1, 2, 1, 3)
    keys[0, :, 0, 0] = torch.tensor([1.0, 0.1])  # the query's own look
    keys[0, :, 0, 1] = torch.tensor([4.0, 3.0])  # a long key the query only roughly points at
    keys[0, :, 0, 2] = torch.tensor([-1.0, 0.0])
    vals = torch.eye(3)[None, :, None, :]  # (1, 3, 1, 3): which key was read
    assert topk_attention(query, keys, vals, 1)[0, :, 0, 0].argmax() == 1
    assert topk_attention(*l2_operands(query, keys), vals, 1)[0, :, 0, 0].argmax() == 0
    assert local_attention(query.expand(-1, -1, 1, 3), keys, vals, 2)[0, :, 0, 0].argmax() == 1
    assert local_attention(*l2_operands(query.expand(-1, -1, 1, 3), keys), vals, 2)[0, :, 0, 0].argmax() == 0


def test_cosine_given_reads_the_given_frame_by_the_features_own_direction():
    """short_term.similarity=cosine_given: a frame's keys are [learned keys, the pooled features at unit norm]; the
    given-frame read matches the latter by cosine, so scaling the given frame's features (per path pixel) leaves the
    offsets unchanged where the learned L2 read changes, and a change of the features' direction moves them."""
    from vos.model.short_term import LastFrame, ShortTermPath

    torch.manual_seed(0)
    f_now, f_given = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    masks = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    scale = F.interpolate(torch.rand(1, 1, 4, 4) * 3 + 0.2, scale_factor=2.0)  # constant over each path pixel
    out = {}
    for sim in ("cosine_given", "l2_given"):
        path = ShortTermPath(8, 4, radius=1, given_topk=3, similarity=sim)
        torch.nn.init.normal_(path.given_in.weight, std=0.5)
        torch.nn.init.normal_(path.fuse[-1].weight, std=0.5)
        keys = path.keys(f_now)
        last = LastFrame(path.keys(f_given), masks)
        run = lambda f: path(keys, last, 2, LastFrame(path.keys(f), masks))  # noqa: E731
        out[sim] = run(f_given), run(f_given * scale), run(f_given.flip(1))
        if sim == "cosine_given":
            assert keys.shape == (1, 4 + 8, 4, 4)
            torch.testing.assert_close(keys[:, 4:], F.normalize(F.avg_pool2d(f_now, 2), dim=1))
    base, scaled, turned = out["cosine_given"]
    torch.testing.assert_close(scaled, base, atol=1e-5, rtol=1e-5)
    assert (turned - base).abs().max() > 1e-2
    base, scaled, _ = out["l2_given"]
    assert (scaled - base).abs().max() > 1e-2


@pytest.mark.parametrize("stride", [16, 8])
def test_given_frame_read_starts_as_a_no_op_and_learns(stride):
    """The given-frame read (short_term.given_topk) adds nothing at initialisation, so a model trained without it
    loads and runs unchanged; once its first layer moves, the logits move and the loss reaches the given frame's
    masks (read at stride 16 by a stride-8 path too)."""
    torch.manual_seed(0)
    model = HODOR(tiny_cfg(**{"short_term.radius": 2, "short_term.given_topk": 4, "short_term.stride": stride}))
    torch.nn.init.normal_(model.short_term.fuse[-1].weight, std=0.5)
    images = torch.rand(3, 3, 64, 96)
    m = torch.zeros(1, 2, 64, 96)
    m[0, 0, 10:30, 20:50], m[0, 1, 35:60, 40:90] = 1, 1
    f = [model.features(images[i:i + 1]) for i in range(3)]
    first = model.step(f[0], given=model.masks_to_s4(m, f[0]))
    second = model.step(f[1], first.desc[:, None], torch.ones(1, 1, first.desc.shape[1], dtype=torch.bool), last=first.last)
    mem = torch.stack([first.desc, second.desc], 1)
    ok = torch.ones(mem.shape[:3], dtype=torch.bool)
    without = model.step(f[2], mem, ok, last=second.last).logits
    torch.testing.assert_close(model.step(f[2], mem, ok, last=second.last, given_frame=first.last).logits, without)
    torch.nn.init.normal_(model.short_term.given_in.weight, std=0.5)
    masks = first.last.masks.detach().requires_grad_()
    out = model.step(f[2], mem, ok, last=second.last, given_frame=type(first.last)(first.last.keys, masks))
    assert (out.logits - without).abs().max() > 1e-2
    out.logits[:, -2:].logsumexp(1).mean().backward()
    assert masks.grad.abs().sum() > 0 and model.short_term.given_in.weight.grad.abs().sum() > 0


def test_read_prior_adds_its_gain_times_the_log_read_and_learns_the_gain():
    """short_term.read_prior: the given-frame read enters each object's offsets as gain * log(read + READ_FLOOR), the
    gain starting at the option's value and learned; the loss reaches it and the given frame's masks. Without the read
    (no given frame) nothing is added; without given_topk the option is refused."""
    from vos.model.short_term import READ_FLOOR, LastFrame

    torch.manual_seed(0)
    model = HODOR(tiny_cfg(**{"short_term.radius": 2, "short_term.given_topk": 4, "short_term.read_prior": 0.5}))
    st = model.short_term
    assert float(st.read_gain.detach()) == 0.5
    keys, last_keys, given_keys = (torch.randn(1, st.key_channels, 4, 6) for _ in range(3))
    last = LastFrame(last_keys, torch.rand(1, 3, 4, 6).softmax(1))
    masks = torch.zeros(1, 3, 4, 6)
    masks[0, 0], masks[0, 1, :2, :3], masks[0, 2, 2:, 3:] = 1, 1, 1
    masks[0, 0] -= masks[0, 1] + masks[0, 2]
    given = LastFrame(given_keys, masks.requires_grad_())
    with torch.no_grad():
        expected = 0.5 * torch.log(st.read_given(keys, given, 2) + READ_FLOOR)
        without_read = st(keys, last, 2, None)
        st.read_gain.zero_()
        base = st(keys, last, 2, given)
        torch.testing.assert_close(st(keys, last, 2, None), without_read)
        st.read_gain.fill_(0.5)
    out = st(keys, last, 2, given)
    torch.testing.assert_close(out - base, expected)
    assert expected.min() < -0.3  # the read says "not here" somewhere: the prior is not a constant
    out.sum().backward()
    assert st.read_gain.grad.abs() > 0 and masks.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="given_topk"):
        HODOR(tiny_cfg(**{"short_term.radius": 2, "short_term.read_prior": 0.5}))


@pytest.mark.parametrize("stride", [16, 8])
def test_short_term_path_starts_as_a_no_op_and_learns_through_the_soft_masks(stride):
    """At initialisation the path adds nothing (the model is the descriptor-only one); once its last layer moves,
    it moves the logits, and the loss reaches the previous frame's soft masks (cycle consistency through it), its
    keys and the features. At stride 16 or 8: the path's keys and masks are that much coarser than the frame."""
    torch.manual_seed(0)
    with_path = HODOR(tiny_cfg(**{"short_term.radius": 2, "short_term.stride": stride}))
    plain = HODOR(tiny_cfg())
    plain.load_state_dict({k: v for k, v in with_path.state_dict().items() if not k.startswith("short_term.")})
    images = torch.rand(2, 3, 64, 96)
    m = torch.zeros(1, 2, 64, 96)
    m[0, 0, 10:30, 20:50], m[0, 1, 35:60, 40:90] = 1, 1
    outs = []
    for model in (with_path, plain):
        f0, f1 = model.features(images[:1]), model.features(images[1:])
        first = model.step(f0, given=model.masks_to_s4(m, f0))
        mem = first.desc[:, None]
        outs.append(model.step(f1, mem, torch.ones(mem.shape[:3], dtype=torch.bool), last=first.last))
    assert plain.short_term is None and outs[1].last is None
    assert outs[0].last.masks.shape == (1, 3, 64 // stride, 96 // stride)
    assert outs[0].last.keys.shape[-2:] == (64 // stride, 96 // stride)
    torch.testing.assert_close(outs[0].logits, outs[1].logits)
    torch.nn.init.normal_(with_path.short_term.fuse[-1].weight, std=0.5)
    f0, f1 = with_path.features(images[:1]), with_path.features(images[1:])
    first = with_path.step(f0, given=with_path.masks_to_s4(m, f0))
    masks = first.last.masks.detach().requires_grad_()
    last = type(first.last)(first.last.keys, masks)
    out = with_path.step(f1, first.desc[:, None], torch.ones(first.desc[:, None].shape[:3], dtype=torch.bool), last=last)
    assert (out.logits - outs[1].logits).abs().max() > 1e-2
    out.logits[:, -2:].logsumexp(1).mean().backward()
    assert masks.grad.abs().sum() > 0 and with_path.short_term.key.weight.grad.abs().sum() > 0


def test_anchor_check_starts_as_a_no_op_and_lowers_the_frames_unlike_their_first():
    """decoder.anchor_check adds nothing at initialisation (a model trained without it decodes unchanged); once
    trained, each past frame's offset comes from its descriptor and its row's FIRST VALID one (the anchor), so a
    frame whose descriptor equals its anchor's gets the anchor's offset, and padded frames do not count as anchors."""
    torch.manual_seed(0)
    plain, checked = HODOR(tiny_cfg()), HODOR(tiny_cfg(**{"decoder.anchor_check": True}))
    checked.load_state_dict(plain.state_dict(), strict=False)
    f = plain.features(torch.rand(1, 3, 64, 96))
    desc = torch.randn(1, 3, plain.num_bg + 2, plain.cfg.channels)
    valid = torch.ones(desc.shape[:3], dtype=torch.bool)
    valid[0, 0, -1] = False  # the last object appears at frame 1: its anchor is frame 1, not frame 0
    torch.testing.assert_close(checked.decode(f, desc, valid), plain.decode(f, desc, valid))

    check = checked.anchor_check
    torch.nn.init.normal_(check.net[-1].weight, std=0.5)
    desc[0, 2, -1] = desc[0, 1, -1]  # frame 2 repeats the last object's anchor; frame 0's row is padding
    off = check(desc, valid)
    assert off.shape == valid.shape
    torch.testing.assert_close(off[0, 2, -1], off[0, 1, -1])
    assert (off[0, 1:, :-1] - off[0, :1, :-1]).abs().min() > 0  # the others differ from their anchor, frame 0
    ref = desc[:, :1].expand_as(desc)
    manual = check.net(torch.cat([desc, ref, desc * ref, (desc - ref).abs()], -1)).squeeze(-1)
    torch.testing.assert_close(off[..., :-1], manual[..., :-1])
    assert (checked.decode(f, desc, valid) - plain.decode(f, desc, valid)).abs().max() > 1e-3


def plain_and_with(option: str, objects: int) -> tuple:
    """A tiny model and a copy of it with a boolean `option` on (its new parts as they start), both in eval mode; two
    random frames; masks (1, objects, 64, 96) of two boxes (further objects empty)."""
    torch.manual_seed(0)
    plain, other = HODOR(tiny_cfg()).eval(), HODOR(tiny_cfg(**{option: True})).eval()
    other.load_state_dict(plain.state_dict(), strict=False)
    img0, img1 = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    masks = torch.zeros(1, objects, 64, 96)
    masks[0, 0, 10:30, 10:40], masks[0, 1, 30:60, 50:90] = 1, 1
    return plain, other, img0, img1, masks


def test_presence_starts_as_a_no_op_and_a_low_score_empties_the_object():
    """decoder.presence: at initialisation the step decodes as without it (scores high, log-sigmoid ~0); a low score
    empties that object's whole map and leaves the others be; the presence loss on an absent object lowers its
    score; the given frame (no memory) has no score."""
    from vos.train.cycles import presence_loss

    plain, gated, img0, img1, masks = plain_and_with("decoder.presence", objects=2)
    outs = {}
    for name, m in (("plain", plain), ("gated", gated)):
        f0, f1 = m.features(img0), m.features(img1)
        first = m.step(f0, given=m.masks_to_s4(masks, f0))
        assert first.presence is None
        mem = first.desc[:, None]
        outs[name] = m.step(f1, mem, torch.ones(mem.shape[:3], dtype=torch.bool))
    torch.testing.assert_close(outs["gated"].probs, outs["plain"].probs, atol=5e-3, rtol=0)
    assert outs["gated"].presence.shape == (1, 2) and (outs["gated"].presence > 5).all()

    with torch.no_grad():
        f0, f1 = gated.features(img0), gated.features(img1)
        mem = gated.step(f0, given=gated.masks_to_s4(masks, f0)).desc[:, None]
    orig = gated.presence.forward
    gated.presence.forward = lambda *a: orig(*a) - torch.tensor([[0.0, 30.0]])  # object 1 scored absent
    out = gated.step(f1, mem, torch.ones(mem.shape[:3], dtype=torch.bool))
    gated.presence.forward = orig
    assert out.probs[0, 2].max() < 1e-3 and out.probs[0, 1].max() > 0.1  # object 1 gone, object 0 kept

    opt = torch.optim.SGD(gated.presence.parameters(), lr=0.5)
    score = gated.step(f1, mem, torch.ones(mem.shape[:3], dtype=torch.bool)).presence.detach()
    for _ in range(3):
        opt.zero_grad()
        out = gated.step(f1, mem, torch.ones(mem.shape[:3], dtype=torch.bool))
        presence_loss(out.presence, torch.tensor([[True, False]]), torch.ones(1, 2, dtype=torch.bool)).backward()
        opt.step()
    after = gated.step(f1, mem, torch.ones(mem.shape[:3], dtype=torch.bool)).presence.detach()
    assert after[0, 1] < score[0, 1] - 0.5  # the absent object's score falls

    # balanced (cycles.presence_balanced): the present and the absent slots' means count alike; padding never
    logits = torch.tensor([[2.0, -1.0, 0.5], [1.0, 3.0, -2.0]])
    present = torch.tensor([[True, True, False], [True, True, True]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    bce = F.binary_cross_entropy_with_logits(logits, present.float(), reduction="none")
    want = 0.5 * (bce[0, 0] + bce[0, 1] + bce[1, 0] + bce[1, 2]) / 4 + 0.5 * bce[0, 2]
    torch.testing.assert_close(presence_loss(logits, present, valid, balanced=True), want)
    torch.testing.assert_close(presence_loss(logits, present, valid), bce[valid].mean())
    everywhere = torch.ones_like(present)
    torch.testing.assert_close(presence_loss(logits, everywhere, valid, balanced=True),
                               presence_loss(logits, everywhere, valid))  # no absent slot: the plain mean


def test_distance_to_the_last_masks_is_exact_and_starts_as_a_no_op():
    """short_term.distance: each pixel's L1 distance to the nearest pixel the object held (> 0.5) a frame ago, over
    the map's longer side, capped at 1 (1 for an object that held none), equals the brute-force one; a path with
    the input loaded from one without it gives the same logits; once its layer moves, a pixel's offset depends on
    how far it is from the object, which the path without it could not see beyond its window."""
    from vos.model.short_term import distance_to

    torch.manual_seed(0)
    masks = (torch.rand(2, 3, 7, 11) > 0.9).float() * 0.9
    masks[1, 2] = 0.4  # held nowhere (below 0.5)
    d = distance_to(masks)
    ys, xs = torch.meshgrid(torch.arange(7), torch.arange(11), indexing="ij")
    for b in range(2):
        for i in range(3):
            held = (masks[b, i] > 0.5).nonzero()
            if len(held) == 0:
                want = torch.ones(7, 11)
            else:
                want = ((ys[..., None] - held[:, 0]).abs() + (xs[..., None] - held[:, 1]).abs()).amin(-1) / 11
            torch.testing.assert_close(d[b, i], want.clamp(max=1).float())

    cfg = {"short_term.radius": 1, "short_term.given_topk": 4}
    plain, dist = HODOR(tiny_cfg(**cfg)), HODOR(tiny_cfg(**cfg, **{"short_term.distance": True}))
    torch.nn.init.normal_(plain.short_term.fuse[-1].weight, std=0.5)
    dist.load_state_dict(plain.state_dict(), strict=False)
    images = torch.rand(2, 3, 64, 320)
    m = torch.zeros(1, 1, 64, 320)
    m[0, 0, 16:48, 16:48] = 1
    outs = {}
    for name, model in (("plain", plain), ("dist", dist)):
        f0, f1 = model.features(images[:1]), model.features(images[1:])
        first = model.step(f0, given=model.masks_to_s4(m, f0))
        outs[name] = model.step(f1, first.desc[:, None], torch.ones(1, 1, model.num_bg + 1, dtype=torch.bool),
                                last=first.last, given_frame=first.last)
    torch.testing.assert_close(outs["dist"].logits, outs["plain"].logits)

    torch.nn.init.normal_(dist.short_term.distance_in.weight, std=0.5)
    keys = torch.zeros(1, dist.cfg.short_term.key_channels, 4, 20)  # every pixel looks the same to the path
    last = type(first.last)(keys, torch.zeros(1, 2, 4, 20))
    last.masks[0, 1, :, :3] = 1  # the object held the three left columns
    last.masks[0, 0] = 1 - last.masks[0, 1]
    with_d = dist.short_term(keys, last, 1)[0, 0]
    without = plain.short_term(keys, last, 1)[0, 0]
    assert (without[:, 9] - without[:, 15]).abs().max() < 1e-6  # beyond its reach, near and far are alike
    assert (with_d[:, 9] - with_d[:, 15]).abs().max() > 1e-3  # with the distance, they are not


def test_mask_keys_start_from_one_key_and_read_out_the_max():
    """decoder.mask_keys: started from a one-key model (vos.checkpoint._more_mask_keys) it decodes as that model
    did, up to the noise that lets its keys come apart; each object's logit is the max over its keys, so a key
    matched to a second look of the object raises the logits where that look is and nowhere else."""
    from vos.checkpoint import _more_mask_keys

    torch.manual_seed(0)
    plain, keyed = HODOR(tiny_cfg()).eval(), HODOR(tiny_cfg(**{"decoder.mask_keys": 3})).eval()
    keyed.load_state_dict(_more_mask_keys(plain.state_dict(), 1, 3))
    w = keyed.desc_proj[2].weight.unflatten(0, (3, -1))
    assert not torch.equal(w[0], w[1]) and torch.allclose(w[0], plain.desc_proj[2].weight, atol=0.05)
    f = plain.features(torch.rand(1, 3, 64, 96))
    desc = torch.randn(1, 2, plain.num_bg + 2, plain.cfg.channels)
    valid = torch.ones(desc.shape[:3], dtype=torch.bool)
    with torch.no_grad():
        a, b = plain.decode(f, desc, valid), keyed.decode(f, desc, valid)
        assert b.shape == a.shape and (b - a).abs().max() < 0.1 * a.abs().max()
        # the max over the keys, key by key: each alone (the others' weights copied from it) never decodes above
        alone = []
        for k in range(3):
            one = HODOR(tiny_cfg()).eval()
            sd = {n: v for n, v in keyed.state_dict().items()}
            sd["desc_proj.2.weight"], sd["desc_proj.2.bias"] = w[k], keyed.desc_proj[2].bias.unflatten(0, (3, -1))[k]
            one.load_state_dict(sd)
            alone.append(one.decode(f, desc, valid))
        torch.testing.assert_close(b, torch.stack(alone).amax(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(VosError, match="not a multiple"):
        _more_mask_keys(keyed.state_dict(), 3, 4)


def test_refine_starts_as_bilinear_and_learns_a_boundary_finer_than_stride_4():
    """decoder.refine: the stride-2 output starts as the stride-4 logits upsampled x2 (its residual is zero); trained
    on a thin bar (3 px, like a wheel's rim) whose stride-4 probability is too faint to survive upsampling, it brings
    the bar back from the stride-2 features; loss and user see the same refinement (softmax of output_logits is
    output_probs, up to how the background cells merge)."""
    torch.manual_seed(0)
    m = HODOR(tiny_cfg(**{"decoder.refine": True}))
    img = torch.zeros(1, 3, 64, 96)
    img[..., 21:24] = 1.0  # a bright bar over columns 21-23
    target = torch.zeros(1, 1, 64, 96)
    target[..., 21:24] = 1
    with torch.no_grad():
        f = m.features(img)
        p = F.avg_pool2d(m.masks_to_s4(target, f), (1, 3), stride=1, padding=(0, 1))  # 0.25 at most: lost
        probs = torch.cat([1 - p, p], 1)
        logits = probs.clamp(min=1e-6).log()
        up = F.interpolate(logits, size=f.f2.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(m.refine(logits, probs, f.f2), up)

    def error() -> float:
        with torch.no_grad():
            out = m.output_probs(probs, f)[0, 1] > 0.5
        return (out != target[0, 0].bool()).float().sum().item()

    before = error()
    assert before >= 3 * 64  # the whole bar missed
    opt = torch.optim.Adam(m.refine.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        lg = m.upsample(m.refine(logits, probs, f.f2), f)
        F.cross_entropy(lg, target[:, 0].long()).backward()
        opt.step()
    assert error() < 0.5 * before
    raw = torch.randn(1, 1 + m.num_bg + 1, 16, 24)  # probabilities above the 1e-6 the user side clamps at
    raw[:, 1:1 + m.num_bg] = -30  # background cells out of play: merging them by max (loss) or sum (user) agrees
    with torch.no_grad():  # at stride 2 (the last upsampling interpolates logits for the loss, probabilities for the user)
        a = m.output_logits(raw, f, (32, 48)).softmax(1)
        b = m.output_probs(logits_to_probs(raw, m.num_bg), f, (32, 48))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="stride-2"):
        HODOR(tiny_cfg(**{"decoder.refine": True, "backbone": "swin_t"}))


def test_lateral8_adds_the_stride_8_lateral_to_the_top_down_features():
    """model.lateral8: f8 is today's FPN output (zero skip at the start) plus a 1x1 conv of the stride-8 lateral
    alone, so what the top-down sum washes out can reach the encoder, the decoder and the short-term keys."""
    torch.manual_seed(0)
    m = HODOR(tiny_cfg(lateral8=True)).eval()
    img = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = m.features(img).f8
        torch.nn.init.normal_(m.fpn.lateral8.weight, std=0.1)
        after = m.features(img).f8
        rest = m.backbone((img - m.mean) / m.std)[1:]
        expected = before + m.fpn.lateral8(m.fpn.lat[0](rest[1]))
    torch.testing.assert_close(after, expected)
    assert (after - before).abs().max() > 1e-2


def test_finer_bg_grid_starts_each_cell_from_the_query_of_its_place():
    """model.bg_grid 3 -> 5 (vos.checkpoint._finer_bg_grid): the 25 cells' queries are the 9 resized over the grid
    (the corners and the centre keep theirs, a cell between two takes their mean), every other weight is the
    checkpoint's, and the finer model segments with 25 background descriptors a frame."""
    from vos.checkpoint import _finer_bg_grid

    torch.manual_seed(0)
    coarse, fine = HODOR(tiny_cfg()), HODOR(tiny_cfg(bg_grid=5)).eval()
    fine.load_state_dict(_finer_bg_grid(coarse.state_dict(), 3, 5))
    q3, q5 = coarse.bg_query.view(3, 3, -1), fine.bg_query.view(5, 5, -1)
    for (a, b), (c, d) in [((0, 0), (0, 0)), ((0, 2), (0, 4)), ((2, 0), (4, 0)), ((2, 2), (4, 4)), ((1, 1), (2, 2))]:
        torch.testing.assert_close(q5[c, d], q3[a, b])
    torch.testing.assert_close(q5[0, 1], (q3[0, 0] + q3[0, 1]) / 2)
    assert fine.num_bg == 25 and torch.equal(fine.obj_query, coarse.obj_query)
    f = fine.features(torch.rand(1, 3, 64, 96))
    desc = fine.encode(f, torch.rand(1, 2, 16, 24))
    assert desc.shape == (1, 25 + 2, 32)
    out = fine.step(f, desc[:, None], torch.ones(1, 1, 27, dtype=torch.bool))
    assert out.logits.shape[1] == 1 + 25 + 2 and out.probs.shape[1] == 3


def test_given_ridge_fits_the_given_frame_and_follows_its_object_by_appearance():
    """short_term.given_ridge: a ridge regression fit in closed form on the given frame's unit features to its
    [background, objects] masks. On features where each object has its own direction, it scores the object highest
    where that object is in another frame, wherever it moved; its input to the fusion starts at zero (the path is
    unchanged), and once it moves the gradient reaches the given masks and the features through the solve."""
    from vos.model.short_term import LastFrame, ShortTermPath

    torch.manual_seed(0)
    C = 8
    look = torch.randn(3, C)  # background, object 1, object 2
    def frame(boxes):  # (1, C, 8, 8) stride-8 features, (1, 3, 4, 4) masks at stride 16
        lab = torch.zeros(4, 4, dtype=torch.long)
        for k, (y, x) in enumerate(boxes, 1):
            lab[y:y + 2, x:x + 2] = k
        f = look[lab].permute(2, 0, 1)[None] + 0.05 * torch.randn(1, C, 4, 4)
        return F.interpolate(f, scale_factor=2.0), F.one_hot(lab, 3).permute(2, 0, 1)[None].float()
    (f_given, m_given), (f_now, m_now) = frame([(0, 0), (2, 2)]), frame([(2, 0), (0, 2)])  # both objects moved
    path = ShortTermPath(C, 4, radius=1, given_topk=3, similarity="l2_given", given_ridge=True)
    plain = ShortTermPath(C, 4, radius=1, given_topk=3, similarity="l2_given")
    plain.load_state_dict({k: v for k, v in path.state_dict().items() if not k.startswith("ridge_in.")})
    keys, given = path.keys(f_now), LastFrame(path.keys(f_given), m_given.requires_grad_())
    assert keys.shape == (1, 4 + C, 4, 4)
    scores = path.read_ridge(keys, given, 2)
    assert torch.equal(scores.argmax(1), m_now.argmax(1))
    torch.testing.assert_close(path.read_ridge(given.keys, given, 2), m_given, atol=0.1, rtol=0)  # its own fit
    last = LastFrame(path.keys(f_given), m_given.detach())
    torch.testing.assert_close(path(keys, last, 2, given), plain(keys[:, :4], last, 2, given))
    torch.nn.init.normal_(path.ridge_in.weight, std=0.5)
    torch.nn.init.normal_(path.fuse[-1].weight, std=0.5)
    f = f_now.clone().requires_grad_()
    out = path(path.keys(f), last, 2, given)
    assert (out - plain(keys[:, :4], last, 2, given)).abs().max() > 1e-2
    out.sum().backward()
    assert given.masks.grad.abs().sum() > 0 and f.grad.abs().sum() > 0
