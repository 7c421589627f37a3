import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vos.config import InferConfig, ModelConfig, load_config, to_dict
from vos.data import read_mask, write_mask
from vos.data.synthetic import make_clip, square_clip, write_davis, write_mp4
from vos.checkpoint import load_models, save_checkpoint
from vos.inference import Tracker, probs_to_ids
from vos.inference.run import DEFAULT_CHECKPOINT
from vos.model import HODOR
from vos.utils import VosError
from vos.infer import main as infer_main

ROOT = Path(__file__).resolve().parents[1]
PAIR_CHECKPOINT = DEFAULT_CHECKPOINT.with_name("pair.pt")  # the default until 2026-12-03: two models, no short-term path
TINY = ["channels=32", "mask_channels=8", "heads=4", "encoder.layers=1", "decoder.layers=1", "backbone_weights=null"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(ModelConfig, None, TINY)
    torch.manual_seed(0)
    model = HODOR(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": {k: v.half() if v.is_floating_point() else v
                                     for k, v in model.state_dict().items()},
                           "config": {"model": to_dict(cfg)}})
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    frames, masks = make_clip(5, n_frames=12, size=(72, 120), n_objects=3, late_objects=1)
    (d / "frames").mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(d / "frames" / f"{t:05d}.jpg")
    write_mp4(d / "clip.mp4", frames, fps=12)
    (d / "masks").mkdir()
    pal = np.random.default_rng(1).integers(0, 256, (256, 3)).astype(np.uint8)
    seen = set()
    relabel = {1: 3, 2: 7, 3: 9}  # arbitrary ids must survive
    for t, m in enumerate(masks):
        new = [i for i in np.unique(m) if i and i not in seen]
        if new:
            sparse = np.zeros_like(m)
            for i in new:
                sparse[m == i] = relabel[int(i)]
            write_mask(d / "masks" / f"{t:05d}.png", sparse, pal)
            seen.update(new)
    return d, frames, masks, pal


def run(*args):
    """infer.py without test-time adaptation (tests/test_adapt.py and test_real_judo run it)."""
    return infer_main([str(a) for a in args] + ["short_side=0", "adapt.steps=0"])


def test_end_to_end_with_late_objects(ckpt, clip_dir, tmp_path):
    d, frames, masks, pal = clip_dir
    assert run("--input", d / "frames", "--masks", d / "masks", "--out", tmp_path, "--checkpoint", ckpt,
               "--overlay", "--probs") == 0
    out = sorted((tmp_path / "frames").glob("*.png"))
    assert len(out) == len(frames)
    first_late = min(int(p.stem) for p in (d / "masks").glob("*.png") if int(p.stem) > 0)
    ids, pal_out = read_mask(out[first_late])
    assert np.array_equal(pal_out, pal) and 9 in np.unique(ids)  # the late object (id 9) is forced in
    assert set(np.unique(read_mask(out[0])[0])) <= {0, 3, 7}
    assert (tmp_path / "frames_overlay.mp4").stat().st_size > 0
    probs = np.load(tmp_path / "frames_probs" / f"{len(frames) - 1:05d}.npz")
    assert list(probs["ids"]) == [3, 7, 9] and probs["probs"].shape == (3, 72, 120)
    assert not list(tmp_path.rglob(".*tmp*"))


def test_mp4_and_folder_give_the_same_masks(clip_dir, tmp_path):
    """A trained model on the same frames as an mp4 and as JPEGs: the masks agree up to codec differences. The
    pair, not the default: on this 72x120 clip the default loses the 90-px object 1 beside object 2 on frame 1 or
    a few frames later depending on the codec's pixels (MODEL_CARD.md): that would test the model, not decoding."""
    d, frames, *_ = clip_dir
    for src in (d / "clip.mp4", d / "frames"):
        # one precision, pinned: amp=auto picks by a timing, which on a busy machine differed between pytest runs,
        # and this clip's masks agree above the bound in bf16 but only to 0.87 in fp32 (so did the code before
        # 2026-12-02); the pair's own window (7): at 3 the codec's pixels move this clip's masks to 0.87 too
        assert run("--input", src, "--mask", d / "masks" / "00000.png", "--out", tmp_path / src.suffix,
                   "--checkpoint", PAIR_CHECKPOINT, "amp=true", "locality=0.2", "window=7") == 0
    a, b = (sorted((tmp_path / sfx / name).glob("*.png")) for sfx, name in ((".mp4", "clip"), ("", "frames")))
    assert len(a) == len(b) == len(frames)
    ious = []
    for pa, pb in zip(a, b):
        ma, mb = read_mask(pa)[0], read_mask(pb)[0]
        for k in set(np.unique(ma)) | set(np.unique(mb)) - {0}:
            ious.append(((ma == k) & (mb == k)).sum() / ((ma == k) | (mb == k)).sum())
    assert len(ious) >= len(frames) and np.mean(ious) > 0.9, np.round(ious, 2)


def test_memory_is_bounded_by_the_window(ckpt):
    model = load_models(ckpt, torch.device("cpu"))
    p = Tracker(model, window=3, anchor_first=True)
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 20:40] = 1
    stored = []
    for t in range(12):
        p.step(np.random.default_rng(t).integers(0, 255, (64, 64, 3), dtype=np.uint8), {1: mask} if t == 0 else None)
        stored.append(p.stored_frames)
    assert max(stored) == 4 and stored[-1] == 4  # 3 recent + the anchor, whatever the length
    p2 = Tracker(model, window=3, anchor_first=False)
    for t in range(6):
        p2.step(np.zeros((64, 64, 3), np.uint8), {1: mask} if t == 0 else None)
    assert p2.stored_frames == 3


def test_frames_before_a_new_object_lose_their_background_descriptors():
    """Frames stored before an object was added encoded its pixels as background: their background
    descriptors must not compete for it (the decoder takes the max over frames); their objects stay. At the
    frame where that object is given they do stay: its mask is forced in, and without background the other
    objects would take every other pixel."""
    from vos.inference.memory import DescriptorMemory

    mem = DescriptorMemory(num_bg=2, window=3)
    mem.add(torch.ones(3, 4), frame=0, given=torch.tensor([True]))  # 2 background + object 1
    mem.add(torch.ones(3, 4), frame=1)
    mem.add(torch.ones(4, 4), frame=2, given=torch.tensor([False, True]))  # object 2 given here
    desc, valid = mem.read(2)
    assert desc.shape == (1, 3, 4, 4)
    # order: anchors (frames 0, 2), then the other recent frames (1)
    assert valid[0].tolist() == [[False, False, True, False], [False, False, True, False], [True, True, True, True]]
    _, valid = mem.read(3, given=torch.tensor([False, False, True]))  # object 3 given at the frame decoded now
    # frame 2 lacks only object 3 (given now): background kept; frames 0, 1 also lack object 2: not
    assert valid[0, 2, :2].all() and not valid[0, :2, :2].any() and not valid[0, :, 4].any()
    _, valid = mem.read(3, given=torch.tensor([True, False, False]))  # a correction of object 1 only
    assert not valid[0, :, :2].any()
    _, valid1 = DescriptorMemory(num_bg=2).read(1)
    assert valid1 is None


def test_an_anchor_keeps_only_what_was_given_there():
    """Frames where masks were given stay in memory for the whole video, but only for the given objects (and
    the background): the other objects' rows there are predictions and leave with the recent window."""
    from vos.inference.memory import DescriptorMemory

    mem = DescriptorMemory(num_bg=1, window=2)
    mem.add(torch.full((2, 4), 0.0), frame=0, given=torch.tensor([True]))
    mem.add(torch.full((3, 4), 1.0), frame=1, given=torch.tensor([False, True]))  # object 2 given; 1 predicted
    _, valid = mem.read(2)
    assert len(mem) == 2 and valid[0, -1].all()  # frame 1 is recent: every row counts
    for t in (2, 3):
        mem.add(torch.full((3, 4), float(t)), frame=t)
    desc, valid = mem.read(2)
    assert [e.frame for e in mem.entries()] == [0, 1, 2, 3]
    assert valid[0, 1].tolist() == [True, False, True]  # anchor 1: background and object 2 only
    assert valid[0, 0].tolist() == [False, True, False]  # anchor 0 predates object 2
    mem.remove_object(0)  # object 1 leaves: anchor 1 keeps object 2 (now row 1)
    _, valid = mem.read(1)
    assert valid[0, 1].tolist() == [True, True] and not valid[0, 0].any()  # anchor 0 predates object 2


def test_small_real_object_keeps_being_tracked(shared_data):
    """soccerball at 192 px: the ball is ~9 px wide, about one stride-8 cell. Its channel must hold the ball.
    (At 128 px, under one cell, the previous default model kept it and the multi-object one loses it: MODEL_CARD.md.)"""
    from vos.data import list_sequences

    model = load_models(DEFAULT_CHECKPOINT, torch.device("cpu"))
    seq = next(s for s in list_sequences(shared_data / "davis2016", "davis2016", "dev") if s.name == "soccerball")
    frames = seq.frames(192)
    p = Tracker(model, window=7)
    ious = []
    for t in range(30):
        gt = seq.read_mask(t)[0] > 0
        ids, probs = p.step(frames[t], {4: gt.astype(np.float32)} if t == 0 else None, out_size=gt.shape)
        assert ids == [4]
        pred = probs.argmax(0).numpy() == 1
        ious.append((pred & gt).sum() / (pred | gt).sum())
    assert ious[0] > 0.99  # the given mask, exactly, at its own size
    assert np.mean(ious[1:]) > 0.5 and np.mean(np.array(ious[1:]) > 0.3) > 0.8, np.round(ious, 2)


def test_locality_prior_keeps_look_alikes_apart(shared_data):
    """Cutie's judo clip (objects 1-4 given at frames 0, 5, 8, 13; four people in white judogi). The decoder
    matches appearance only: without the locality prior object 1 (the two fighters) takes the spectators and
    object 4, given on a spectator at frame 13, is gone at frame 14. With it every object stays present and
    object 1 does not grow beyond its given area."""
    from vos.data import open_frames

    d = shared_data / "cutie-examples"
    model = load_models(PAIR_CHECKPOINT, torch.device("cpu"))
    frames = open_frames(d / "images" / "judo", short_side=InferConfig.short_side)
    prompts = {}
    for q in sorted((d / "masks" / "judo").glob("*.png")):
        with pytest.warns(UserWarning, match="resized") if q.stem == "00005" else contextlib.nullcontext():
            ids = read_mask(q, size=(480, 854))[0]
        prompts[int(q.stem)] = {int(k): (ids == k).astype(np.float32) for k in np.unique(ids) if k}
    p = Tracker(model, window=7, locality=0.2)
    areas = []
    for t in range(len(frames)):
        ids, probs = p.step(frames[t], prompts.get(t), out_size=(480, 854))
        areas.append(np.bincount(probs_to_ids(ids, probs).ravel(), minlength=5))
    given_at = {k: t for t, new in prompts.items() for k in new}
    for k, t0 in given_at.items():
        assert min(a[k] for a in areas[t0 + 1:]) >= 500, (k, [int(a[k]) for a in areas])
    assert areas[-1][1] <= 1.3 * prompts[0][1].sum(), [int(a[1]) for a in areas]
    spectators = prompts[13][4] > 0
    assert (probs_to_ids(ids, probs)[spectators] == 1).mean() < 0.2  # object 1 is not on object 4


@pytest.mark.parametrize("radius, given_topk, check, distance, similarity, prior",
                         [(0, 0, False, False, "dot", 0), (2, 0, False, False, "dot", 0), (2, 4, False, True, "dot", 0),
                          (0, 0, True, False, "dot", 0), (2, 4, False, False, "l2", 0),
                          (2, 4, False, False, "l2_given", 0), (2, 4, False, False, "cosine_given", 0),
                          (2, 4, False, False, "l2_given", 1.0)])
def test_training_and_inference_paths_agree(radius, given_topk, check, distance, similarity, prior):
    """The same frames and mask through the training cycle graph and through the Tracker give the same
    descriptors and logits: one per-frame step, one resampling; with the short-term path, the node's last source
    plays the previous frame, and its first source the given frame; the anchor check compares with the same one."""
    from vos.train.cycles import GT, CycleGraph, split_features

    cfg = load_config(ModelConfig, None, TINY + [f"short_term.radius={radius}", f"short_term.given_topk={given_topk}",
                                                 f"decoder.anchor_check={check}", f"short_term.distance={distance}",
                                                 f"short_term.similarity={similarity}", f"short_term.read_prior={prior}"])
    torch.manual_seed(0)
    model = HODOR(cfg).eval()
    if check:
        torch.nn.init.normal_(model.anchor_check.net[-1].weight, std=0.5)
    if radius:
        torch.nn.init.normal_(model.short_term.fuse[-1].weight, std=0.5)  # not the no-op it starts as
    if given_topk:
        torch.nn.init.normal_(model.short_term.given_in.weight, std=0.5)
    if distance:
        torch.nn.init.normal_(model.short_term.distance_in.weight, std=0.5)
    torch.manual_seed(1)
    images = torch.rand(1, 3, 3, 64, 96)
    mask = torch.zeros(1, 3, 1, 64, 96)
    mask[0, 0, 0, 20:44, 30:60] = 1
    valid = torch.ones(1, 1, dtype=torch.bool)
    with torch.no_grad():
        g = CycleGraph(model, split_features(model, images), mask, valid, detach_masks=False)
        n1 = ((GT,), 1)
        n2 = ((GT, n1), 2)  # [0, 1] -> 2: what inference does at frame 2 with the anchor and window >= 2
        train_desc = [g.desc(GT), g.desc(n1), g.desc(n2)]
        train_logits = [g.logits(n1), g.logits(n2)]
        if radius:  # the path moves the logits (else the comparison below would not test it)
            plain = model.predict(g.feats[2], torch.stack([g.desc(GT), g.desc(n1)], 1),
                                  torch.ones(1, 2, model.num_bg + 1, dtype=torch.bool), 1)[0]
            assert (plain - train_logits[1]).abs().max() > 1e-2
    # the training graph has no locality rule (an inference component); both run in fp32 here
    p = Tracker([model], window=7, anchor_first=True, locality=0)
    inf_logits = []
    for t in range(3):
        p.step(images[0, t], {1: mask[0, 0, 0].numpy()} if t == 0 else None)
        if t:
            inf_logits.append(p.last.logits)
    inf_desc = [e.desc for e in p.memories[0].entries()]
    for a, b in zip(train_desc, inf_desc, strict=True):
        torch.testing.assert_close(b, a[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(train_logits, inf_logits, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_short_term_path_follows_objects_added_and_removed(clip_dir):
    """The previous frame's masks keep one channel per tracked object: a new object counts as absent a frame ago, a
    removed one leaves; so do the given frames' masks."""
    from vos.model.short_term import LastFrame

    d, frames, masks, _ = clip_dir
    cfg = load_config(ModelConfig, None, TINY + ["short_term.radius=2", "short_term.given_topk=4"])
    torch.manual_seed(0)
    model = HODOR(cfg).eval()
    torch.nn.init.normal_(model.short_term.fuse[-1].weight, std=0.5)
    torch.nn.init.normal_(model.short_term.given_in.weight, std=0.5)
    p = Tracker([model], window=3, locality=0)
    p.step(frames[0], {3: (masks[0] == 1).astype(np.float32)})
    assert p.lasts[0].masks.shape[1] == 2
    p.step(frames[1], {7: (masks[0] == 2).astype(np.float32)})
    assert p.lasts[0].masks.shape[1] == 3
    # both frames where masks were given are read, as one set of pixels; object 7 is absent in the first
    first, second = p.given_frames[0]
    both = LastFrame.concat(p.given_frames[0], 2)
    assert both.keys.shape[-1] == 2 * first.keys.shape[-1] and both.masks.shape[1] == 3
    assert both.masks[:, 2, :, : first.keys.shape[-1]].abs().sum() == 0
    p.remove_object(3)
    assert p.lasts[0].masks.shape[1] == 2 and [f.masks.shape[1] for f in p.given_frames[0]] == [1, 2]
    ids, probs = p.step(frames[2])
    assert ids == [7] and probs.shape == (2, 72, 120) and torch.isfinite(probs).all()
    p.reset()
    assert p.lasts == [None] and p.given_frames == [[]]


def test_pixel_memory_keeps_every_nth_frame_for_the_given_read():
    """With pixel_memory_every N, the given-frame read also sees every Nth frame (not the given ones) with its
    predicted masks, the last pixel_memory_frames of them; it changes what the read returns, and removing an object
    removes it there too."""
    cfg = load_config(ModelConfig, None, TINY + ["short_term.radius=2", "short_term.given_topk=4"])
    torch.manual_seed(0)
    model = HODOR(cfg).eval()
    torch.nn.init.normal_(model.short_term.fuse[-1].weight, std=0.5)
    torch.nn.init.normal_(model.short_term.given_in.weight, std=0.5)
    images = torch.rand(8, 3, 64, 96)
    mask = torch.zeros(64, 96)
    mask[20:44, 30:60] = 1
    with_memory = Tracker([model], locality=0, pixel_memory_every=2, pixel_memory_frames=2)
    without = Tracker([model], locality=0)
    lasts = {}
    for t in range(8):
        new = {1: mask.numpy(), 2: (1 - mask).numpy()} if t == 0 else None
        with_memory.step(images[t], new)
        without.step(images[t], new)
        lasts[t] = with_memory.lasts[0]
        if t < 3:
            torch.testing.assert_close(with_memory.last.probs, without.last.probs)
    assert [id(f) for f in with_memory.pixel_memory[0]] == [id(lasts[4]), id(lasts[6])]
    assert (with_memory.last.probs - without.last.probs).abs().max() > 1e-3
    with_memory.remove_object(1)
    assert [f.masks.shape[1] for f in with_memory.pixel_memory[0]] == [2, 2]
    with_memory.reset()
    assert list(with_memory.pixel_memory[0]) == []


def test_fused_model_gives_the_unfused_output(tmp_path):
    cfg = load_config(ModelConfig, None, TINY)
    torch.manual_seed(0)
    model = HODOR(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them changes the weights
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": {"model": to_dict(cfg)}})
    (plain,), (fused,) = (load_models(path, torch.device("cpu"), fuse=f) for f in (False, True))
    assert sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules()) < \
        sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    frames, masks = make_clip(3, n_frames=4, size=(64, 96), n_objects=2, late_objects=0)
    outs = []
    for m in (plain, fused):
        p = Tracker([m], window=3)  # folding is exact in fp32; bf16 rounds the two differently
        outs.append([p.step(f, {k: (masks[0] == k).astype(np.float32) for k in (1, 2)} if t == 0 else None)[1]
                     for t, f in enumerate(frames)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_removing_an_object_mid_video(ckpt, clip_dir):
    from vos.baselines import BASELINES, BaselineStepper
    from vos.data import FrameFolder
    from vos.inference import VideoSession

    d, frames, masks, _ = clip_dir
    p = Tracker(load_models(ckpt, torch.device("cpu")), window=3)
    p.step(frames[0], {3: (masks[0] == 1).astype(np.float32), 7: (masks[0] == 2).astype(np.float32)})
    p.step(frames[1])
    p.remove_object(3)
    assert p.object_ids == [7] and all(len(e.desc) == p.models[0].num_bg + 1 for e in p.memories[0].entries())
    ids, probs = p.step(frames[2])
    assert ids == [7] and probs.shape == (2, 72, 120)
    with pytest.raises(VosError, match="not tracked"):
        p.remove_object(3)
    # the session API: an object removed at frame 5 is in the outputs before and absent after
    session = VideoSession(BaselineStepper(BASELINES["copy"]), FrameFolder(d / "frames"))
    session.add_mask(0, masks[0])
    session.remove_object(1, frame_index=5)
    seen = {t: set(np.unique(probs_to_ids(ids, probs))) for t, ids, probs in session.propagate()}
    assert 1 in seen[4] and 1 not in seen[5] and 1 not in seen[11]
    session.remove_object(2)
    assert all(2 not in p for p in session.prompts.values())


def test_a_session_adapts_once_per_set_of_prompts(clip_dir):
    """The session runs its adaptation hook before propagating, once for the prompts it was given; new or changed
    prompts adapt again; adapt=None (adapt.steps=0) never does."""
    from vos.baselines import BASELINES, BaselineStepper
    from vos.data import FrameFolder
    from vos.inference import VideoSession

    d, frames, masks, _ = clip_dir
    calls = []

    def adapt(session):
        calls.append(sorted((t, o) for t, m in session.prompts.items() for o in m))
        return 1.5

    session = VideoSession(BaselineStepper(BASELINES["copy"]), FrameFolder(d / "frames"), adapt=adapt)
    session.add_mask(0, masks[0])
    assert session.adapt_seconds == 0 and not calls  # nothing until propagating
    list(session.propagate())
    list(session.propagate(reverse=True))
    assert calls == [[(0, 1), (0, 2)]] and session.adapt_seconds == 1.5
    session.add_mask(6, np.where(masks[6] == 3, 3, 0).astype(np.uint8))
    list(session.propagate())
    assert calls[-1] == [(0, 1), (0, 2), (6, 3)] and len(calls) == 2
    session.add_mask(6, np.where(masks[7] == 3, 3, 0).astype(np.uint8))  # the same object, corrected
    next(session.propagate())
    assert len(calls) == 3
    session.adapt = None
    list(session.propagate())
    assert len(calls) == 3


def test_dataset_root_and_baselines(clip_dir, tmp_path):
    _, frames, masks, _ = clip_dir
    square = square_clip([(40, 60, 8, 3)], n=8, size=56)
    root = write_davis(tmp_path / "ds", {"a": (frames, masks), "b": (frames[:6], masks[:6]), "sq": square}, split="val")
    for method in ("copy", "flow"):
        assert infer_main(["--dataset-root", str(root), "--layout", "davis2017", "--split", "val",
                           "--out", str(tmp_path / method), "--method", method]) == 0
        assert len(list((tmp_path / method / "b").glob("*.png"))) == 6
    first = masks[0] * np.isin(masks[0], (1, 2))  # objects present at frame 0 (object 3 comes later)
    copied = [read_mask(tmp_path / "copy" / "a" / f"{t:05d}.png")[0] for t in range(len(frames))]
    assert all(np.array_equal(c, first) for c in copied)  # copy: the first mask on every frame
    # flow moves the mask with the square (a flat square: the aperture problem slows it), copy does not
    ious = {m: [_iou(read_mask(tmp_path / m / "sq" / f"{t:05d}.png")[0], square[1][t], 1) for t in range(1, 8)]
            for m in ("copy", "flow")}
    assert np.mean(ious["flow"]) > np.mean(ious["copy"]) + 0.1 and ious["flow"][-1] > ious["copy"][-1] + 0.15, ious


def test_torchrun_shards_sequences(clip_dir, tmp_path):
    _, frames, masks, _ = clip_dir
    root = write_davis(tmp_path / "ds", {n: (frames[:4], masks[:4]) for n in "abcd"}, split="val")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "infer.py"),
                        "--dataset-root", str(root), "--layout", "davis2017", "--split", "val", "--out",
                        str(tmp_path / "o"), "--method", "copy"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == list("abcd")
    assert r.stdout.count("wrote 8 frames") == 2  # two sequences of 4 frames per rank
    first = masks[0] * np.isin(masks[0], (1, 2))
    assert all(np.array_equal(read_mask(tmp_path / "o" / n / f"{t:05d}.png")[0], first) for n in "abcd" for t in range(4))


def test_torchrun_shards_sequences_with_test_time_adaptation(ckpt, clip_dir, tmp_path):
    _, frames, masks, _ = clip_dir
    root = write_davis(tmp_path / "ds", {n: (frames[:5], masks[:5]) for n in "ab"}, split="val")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "infer.py"),
                        "--dataset-root", str(root), "--layout", "davis2017", "--split", "val", "--out",
                        str(tmp_path / "o"), "--checkpoint", str(ckpt), "adapt.steps=1", "adapt.size=64",
                        "adapt.batch_size=1", "short_side=0"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("wrote 5 frames") == 2
    # each rank adapted and segmented its own sequence as one process does (same seed, same masks)
    assert infer_main(["--dataset-root", str(root), "--layout", "davis2017", "--split", "val", "--out",
                       str(tmp_path / "one"), "--checkpoint", str(ckpt), "adapt.steps=1", "adapt.size=64",
                       "adapt.batch_size=1", "short_side=0"]) == 0
    for n in "ab":
        for t in range(5):
            a, b = (read_mask(d / n / f"{t:05d}.png")[0] for d in (tmp_path / "o", tmp_path / "one"))
            assert (a == b).mean() > 0.99, (n, t)


def test_torchrun_writes_one_youtubevos_zip_with_every_rank_s_sequences(clip_dir, tmp_path):
    import zipfile

    from vos.data.synthetic import write_youtubevos

    _, frames, masks, _ = clip_dir
    root = write_youtubevos(tmp_path / "yt", {n: (frames[:6], masks[:6]) for n in "abc"}, stride=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "infer.py"),
                        "--dataset-root", str(root), "--layout", "youtubevos", "--split", "valid", "--out",
                        str(tmp_path / "o"), "--method", "copy", "--youtubevos-zip", str(tmp_path / "sub.zip")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = zipfile.ZipFile(tmp_path / "sub.zip").namelist()
    assert sorted({n.split("/")[1] for n in names}) == ["a", "b", "c"] and len(names) == 9


def test_a_corrupt_video_prints_only_our_error(ckpt, clip_dir, tmp_path, capfd):
    d = clip_dir[0]
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes((d / "clip.mp4").read_bytes()[:300])
    assert run("--input", trunc, "--mask", d / "masks" / "00000.png", "--out", tmp_path / "o", "--checkpoint", ckpt) == 2
    err = capfd.readouterr().err
    assert "cannot open video" in err and "truncated or corrupt" in err
    assert "video_reader.cc" not in err and "moov atom" not in err, err


def test_bad_inputs(ckpt, clip_dir, tmp_path, capsys):
    d, frames, masks, _ = clip_dir
    m0 = d / "masks" / "00000.png"

    def fails(*args, match):
        assert run(*args) == 2
        err = capsys.readouterr().err
        assert match in err, err

    fails("--input", tmp_path / "nope.mp4", "--mask", m0, "--out", tmp_path / "o", "--checkpoint", ckpt,
          match="not found")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    fails("--input", tmp_path / "bad.mp4", "--mask", m0, "--out", tmp_path / "o", "--checkpoint", ckpt,
          match="video")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(d / "frames", corrupt)
    (corrupt / "00004.jpg").write_bytes(b"\xff\xd8garbage")
    fails("--input", corrupt, "--mask", m0, "--out", tmp_path / "o", "--checkpoint", ckpt, match="00004.jpg")
    assert not (tmp_path / "o" / "corrupt" / "00004.png").exists()
    assert sorted(p.name for p in (tmp_path / "o" / "corrupt").glob("*.png")) == [f"{t:05d}.png" for t in range(4)]
    big = tmp_path / "big.png"
    write_mask(big, np.pad(read_mask(m0)[0], 10))
    fails("--input", d / "frames", "--mask", big, "--out", tmp_path / "o", "--checkpoint", ckpt,
          match="must match the frame size")
    empty = tmp_path / "empty.png"
    write_mask(empty, np.zeros((72, 120), np.uint8))
    fails("--input", d / "frames", "--mask", empty, "--out", tmp_path / "o", "--checkpoint", ckpt, match="empty")
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 120, 3), dtype=np.uint8)).save(rgb)
    fails("--input", d / "frames", "--mask", rgb, "--out", tmp_path / "o", "--checkpoint", ckpt, match="indexed")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a regular file instead
        ro = tmp_path / "a_file"
        ro.write_text("x")
    fails("--input", d / "frames", "--mask", m0, "--out", ro / "sub", "--checkpoint", ckpt, match="output directory")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(Path(ckpt).read_bytes()[:2000])
    fails("--input", d / "frames", "--mask", m0, "--out", tmp_path / "o", "--checkpoint", trunc,
          match="corrupt or truncated")
    other = tmp_path / "other.pt"
    state = torch.load(ckpt, weights_only=True)
    state["config"]["model"]["channels"] = 64
    torch.save(state, other)
    fails("--input", d / "frames", "--mask", m0, "--out", tmp_path / "o", "--checkpoint", other,
          match="does not fit")
    fails("--input", d / "frames", "--mask", m0, "--out", tmp_path / "o", "--checkpoint", ckpt, "windw=3",
          match="window")


def test_real_judo(shared_data, tmp_path):
    """infer.py with the shipped model on Cutie's judo clip (sparse masks, one 853 px wide): every object is kept
    on every frame after the one it is given at (not only there, where its mask is forced)."""
    ex = shared_data / "cutie-examples"
    with pytest.warns(UserWarning, match="853x480"):
        assert infer_main(["--input", str(ex / "images" / "judo"), "--masks", str(ex / "masks" / "judo"), "--out",
                           str(tmp_path)]) == 0
    out = [read_mask(p)[0] for p in sorted((tmp_path / "judo").glob("*.png"))]
    assert len(out) == 16 and out[0].shape == (480, 854)
    for frame, obj in ((0, 1), (5, 2), (8, 3), (13, 4)):
        assert all((ids == obj).sum() >= 500 for ids in out[frame:]), (obj, [int((i == obj).sum()) for i in out])


def test_youtubevos_dataset_and_submission_zip(clip_dir, tmp_path):
    import zipfile

    from vos.data.synthetic import write_youtubevos

    _, frames, masks, _ = clip_dir
    root = write_youtubevos(tmp_path / "yt", {"v": (frames, masks)}, stride=2)
    assert infer_main(["--dataset-root", str(root), "--layout", "youtubevos", "--split", "valid", "--out",
                       str(tmp_path / "o"), "--method", "copy", "--youtubevos-zip", str(tmp_path / "sub.zip")]) == 0
    names = zipfile.ZipFile(tmp_path / "sub.zip").namelist()
    assert names == [f"Annotations/v/{t:05d}.png" for t in range(0, 12, 2)]
    late = read_mask(tmp_path / "o" / "v" / f"{max(int(n[-9:-4]) for n in names):05d}.png")[0]
    assert set(np.unique(late)) == {0, 1, 2, 3}  # the late object was picked up from its sparse annotation


def test_start_from_a_box_or_clicks(ckpt, tmp_path, capsys):
    from vos.inference.prompts import mask_from_prompts

    frames, masks = make_clip(5, n_frames=6, size=(144, 240), n_objects=2, late_objects=0)
    d = tmp_path / "in"
    d.mkdir()
    write_mp4(d / "clip.mp4", frames, fps=12)
    boxes = []
    for k in (1, 2):
        ys, xs = np.nonzero(masks[0] == k)
        boxes.append(f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}")
    assert run("--input", d / "clip.mp4", "--box", boxes[0], "--box", boxes[1], "--out", tmp_path,
               "--checkpoint", ckpt) == 0
    prompt, _ = read_mask(tmp_path / "clip_prompt_00000.png")  # saved beside the outputs, for the user to inspect
    for k in (1, 2):
        iou = ((prompt == k) & (masks[0] == k)).sum() / ((prompt == k) | (masks[0] == k)).sum()
        assert iou > 0.6, (k, iou)
    assert len(list((tmp_path / "clip").glob("*.png"))) == len(frames)
    # clicks alone seed an object; a negative click inside the box removes what is around it
    ys, xs = np.nonzero(masks[0] == 1)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    assert (mask_from_prompts(frames[0], points=[(cx, cy, 1)])[cy, cx]) == 1
    with pytest.warns(UserWarning, match="ellipse"):  # a flat box: GrabCut has nothing to separate
        ellipse = mask_from_prompts(np.full((60, 80, 3), 128, np.uint8), [(20, 10, 60, 50)])
    assert ellipse[30, 40] == 1 and ellipse[11, 21] == 0 and ellipse[0, 0] == 0
    for bad, match in ((["--box", "1,2,3"], "x0,y0,x1,y1"), (["--box", "5,5,2,2"], "greater"),
                       (["--points", "3,4,7"], "label 0 or 1"), (["--box", boxes[0], "--box-frame", "99"], "outside"),
                       (["--box", "0,0,2000,2000"], "covers the whole 240x144 frame"),
                       (["--box", "300,200,400,300"], "lies outside the 240x144 frame")):
        assert run("--input", d / "clip.mp4", *bad, "--out", tmp_path / "bad", "--checkpoint", ckpt) == 2
        assert match in capsys.readouterr().err


def test_backward_propagation_from_a_late_annotation_on_real_video(shared_data, tmp_path):
    """bear given only at frame 40: frames 0-39 come from propagating backwards (mp4 input, decoded in chunks)."""
    from vos.data import VideoFile, list_sequences
    from vos.inference.run import Job, Runner

    seq = next(s for s in list_sequences(shared_data / "davis2016", "davis2016", "dev") if s.name == "bear")
    video = VideoFile(shared_data / "videos" / "bear.mp4", short_side=160)
    assert [i for i, _ in video.backwards(20, chunk=8)] == list(range(20, -1, -1))
    assert all(np.array_equal(f, video[i]) for i, f in video.backwards(9, chunk=4) if i in (9, 6, 0))
    runner = Runner(load_config(InferConfig, None, ["short_side=160"]))
    job = Job("bear", shared_data / "videos" / "bear.mp4", {"00040": seq.annotations[40]}, binary_255=True)
    r = runner.run(job, tmp_path, overlay_mp4=True, progress=False)
    assert r["frames"] == len(seq.frame_names)
    ious = []
    for t in range(40):
        gt = seq.read_mask(t)[0] > 0
        pred = read_mask(tmp_path / "bear" / f"{t:05d}.png")[0] > 0
        ious.append((gt & pred).sum() / (gt | pred).sum())
    assert np.mean(ious) >= 0.7, np.round(ious, 2)
    assert len(VideoFile(tmp_path / "bear_overlay.mp4")) == len(seq.frame_names)


def _tiny_checkpoint(path: Path, init_seed: int, **config) -> Path:
    cfg = load_config(ModelConfig, None, TINY)
    torch.manual_seed(init_seed)
    save_checkpoint(path, {"model": HODOR(cfg).state_dict(), "config": {"model": to_dict(cfg), **config}})
    return path


def test_several_models_run_together_and_ship_as_one_checkpoint(clip_dir, tmp_path):
    """Each model decodes from its own memory, the probabilities are averaged, and every model re-encodes from
    the averaged masks: at the first frame after the given one (both encoded the same given mask) the output is
    the mean of the models' own; two identical models give the single model's output on every frame. The
    checkpoint keeps every member's own config."""
    from vos.checkpoint import export, init_from, load_checkpoint

    d, frames, masks, _ = clip_dir
    a, b = _tiny_checkpoint(tmp_path / "a.pt", 0, seed=0), _tiny_checkpoint(tmp_path / "b.pt", 1, seed=1)
    export([str(a), str(b)], str(tmp_path / "ens.pt"), ensemble=True)
    export([str(a), str(a)], str(tmp_path / "same.pt"), ensemble=True)
    export([str(a)], str(tmp_path / "a16.pt"))  # the members are stored in fp16, as a single export is
    assert [m["config"]["seed"] for m in load_checkpoint(tmp_path / "ens.pt")["members"]] == [0, 1]
    cpu = torch.device("cpu")
    ens, same, single, member_b = (load_models(p, cpu) for p in (tmp_path / "ens.pt", tmp_path / "same.pt",
                                                                  tmp_path / "a16.pt", b))
    assert len(ens) == 2 and len(single) == 1
    with torch.no_grad():
        for w in member_b[0].parameters():
            w.copy_(w.half().float())  # b's weights as the ensemble stores them
    given = {k: (masks[0] == k).astype(np.float32) for k in (1, 2)}

    def propagate(models, n):
        p = Tracker(models)
        return [p.step(f, given if t == 0 else None)[1] for t, f in enumerate(frames[:n])]

    e1, a1, b1 = (propagate(m, 2)[1] for m in (ens, single, member_b))
    assert not torch.allclose(a1, b1, atol=1e-2)  # the members disagree
    torch.testing.assert_close(e1, (a1 + b1) / 2, atol=1e-4, rtol=1e-3)
    for x, y in zip(propagate(same, 6), propagate(single, 6), strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3)
    # members=[i] runs one model of the checkpoint alone (e.g. for speed)
    from vos.inference import Runner

    one = Runner(load_config(InferConfig, None, ["members=[1]", "amp=false"]), checkpoint=str(tmp_path / "ens.pt"))
    assert len(one.models) == 1
    for x, y in zip(propagate(one.models, 3), propagate(member_b, 3)):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-3)
    with pytest.raises(VosError, match=r"members=\[2\]: .* holds 2 model\(s\), numbered 0..1"):
        Runner(load_config(InferConfig, None, ["members=[2]"]), checkpoint=str(tmp_path / "ens.pt"))
    data = (tmp_path / "ens.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(VosError, match="corrupt or truncated"):
        load_models(tmp_path / "cut.pt", cpu)
    with pytest.raises(VosError, match="a checkpoint of 2 models; start from one of them with .*ens.pt#K"):
        init_from(load_models(a, cpu, fuse=False)[0], tmp_path / "ens.pt")
    with pytest.raises(VosError, match="K in 0..1"):
        init_from(load_models(a, cpu, fuse=False)[0], f"{tmp_path / 'ens.pt'}#2")
    with pytest.raises(VosError, match="holds one model; drop '#1'"):
        init_from(load_models(a, cpu, fuse=False)[0], f"{a}#1")
    start = load_models(a, cpu, fuse=False)[0]
    init_from(start, f"{tmp_path / 'ens.pt'}#1")  # member 1 of the pair = b's weights
    stored = load_checkpoint(tmp_path / "ens.pt")["members"][1]["model"]
    assert all(torch.equal(v, stored[k].to(v.dtype)) for k, v in start.state_dict().items())
    with pytest.raises(VosError, match="at least two"):
        export([str(a)], str(tmp_path / "one.pt"), ensemble=True)
    assert not (tmp_path / "one.pt").exists()
    # the format of 2026-12-01 (members' weights under "members.<i>." and one config) still loads
    old = {"model": {f"members.{i}.{k}": v for i, s in enumerate((a, b))
                     for k, v in torch.load(s, weights_only=True)["model"].items()},
           "config": {"model": to_dict(load_config(ModelConfig, None, TINY))}, "ensemble": [str(a), str(b)]}
    torch.save(old, tmp_path / "old.pt")
    for x, y in zip(propagate(load_models(tmp_path / "old.pt", cpu), 3), propagate(load_models(a, cpu) +
                                                                                     load_models(b, cpu), 3)):
        torch.testing.assert_close(x, y)


def _iou(labels: np.ndarray, gt: np.ndarray, obj: int) -> float:
    return float(((labels == obj) & (gt == obj)).sum() / max(((labels == obj) | (gt == obj)).sum(), 1))


@pytest.fixture(scope="module")
def shipped():
    """The shipped model (first member): a trained model, in the repository, that tracks a flat square."""
    return load_models(DEFAULT_CHECKPOINT, torch.device("cpu"))[:1]


def test_the_shipped_model_tracks_a_moving_square(shipped):
    frames, masks = square_clip([(40, 60, 8, 3)], n=10, size=56)
    tracker = Tracker(shipped)
    ious = [_iou(tracker.step(f, {1: (masks[0] == 1).astype(np.float32)} if t == 0 else None)[1].argmax(0).numpy(),
                 masks[t], 1) for t, f in enumerate(frames)]
    assert min(ious[1:]) > 0.8, np.round(ious, 2)


@pytest.fixture(scope="module")
def without_path():
    """Member 0 of checkpoints/pair.pt (the default until 2026-12-03): a trained model without the short-term
    path, which matches appearance only."""
    return load_models(PAIR_CHECKPOINT, torch.device("cpu"))[:1]


def _two_look_alikes(models, radius: float) -> np.ndarray:
    """Two identical squares moving down on either side of the frame: each object's IoU on frames 1-15."""
    frames, masks = square_clip([(30, 20, 4, 6), (250, 20, -4, 6)], n=16)
    given = {k: (masks[0] == k).astype(np.float32) for k in (1, 2)}
    tracker = Tracker(models, locality=radius)
    labels = [probs_to_ids(*tracker.step(f, given if t == 0 else None)) for t, f in enumerate(frames)]
    return np.array([[_iou(lab, masks[t], k) for k in (1, 2)] for t, lab in enumerate(labels)])[1:]


def test_the_locality_rule_keeps_two_look_alikes_apart(without_path):
    """Appearance alone gives both ids to one of the squares (object 2 is lost); with the locality rule each id
    stays on its own square."""
    alone, ruled = _two_look_alikes(without_path, 0.0), _two_look_alikes(without_path, 0.2)
    assert alone[:, 1].mean() < 0.3, alone  # the look-alike takes object 2's id away
    assert (ruled.mean(0) > 0.7).all() and ruled.min() > 0.5, ruled


def test_the_shipped_model_keeps_two_look_alikes_apart_by_itself(shipped):
    """The same two squares, the shipped model with the default inference (no locality rule): its short-term path
    keeps each id on its own square, which the model without it (above) does not."""
    assert InferConfig.locality == 0
    scores = _two_look_alikes(shipped, InferConfig.locality)
    assert (scores.mean(0) > 0.7).all() and scores.min() > 0.5, scores


def test_the_locality_rule_follows_object_ids_not_channels(without_path):
    """Object 1 is removed and a new object 3 is given at the same frame: object 2 (now in channel 1, where
    object 1 was) keeps its own neighbourhood, not object 1's, and is not lost."""
    frames, masks = square_clip([(30, 20, 4, 6), (250, 20, -4, 6), (140, 130, 0, 0, 5)], n=8,
                             colours={3: (40, 80, 220)})
    tracker = Tracker(without_path, locality=0.2)
    for t in range(5):
        tracker.step(frames[t], {k: (masks[0] == k).astype(np.float32) for k in (1, 2)} if t == 0 else None)
    tracker.remove_object(1)
    ids, probs = tracker.step(frames[5], {3: (masks[5] == 3).astype(np.float32)})
    assert ids == [2, 3]
    assert _iou(probs_to_ids(ids, probs), masks[5], 2) > 0.6


def test_a_run_of_the_removed_self_read_option_still_loads(tmp_path):
    """Runs started while decoder.self_read existed (off) saved it in their config; they load without it."""
    cfg = load_config(ModelConfig, None, TINY)
    config = {"model": to_dict(cfg)}
    config["model"]["decoder"]["self_read"] = False
    save_checkpoint(tmp_path / "m.pt", {"model": HODOR(cfg).state_dict(), "config": config})
    (model,) = load_models(tmp_path / "m.pt", torch.device("cpu"))
    assert "self_read" not in model.cfg.decoder


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_tracker_outputs_through_the_stride_2_refinement(dtype):
    """decoder.refine: the masks a user gets pass through the refinement (a changed residual changes them), memory
    does not (the stride-4 probabilities the next frame reads are the same), and the given frame stays exact; in
    fp32 and with bf16 forward passes (features in bf16, the refinement outside the autocast block)."""
    cfg = load_config(ModelConfig, None, TINY + ["decoder.refine=true"])
    torch.manual_seed(0)
    model = HODOR(cfg).eval()
    torch.manual_seed(1)
    images = torch.rand(3, 3, 64, 96)
    mask = np.zeros((64, 96), np.float32)
    mask[20:44, 30:60] = 1

    def track():
        p = Tracker([model], window=7, locality=0, dtype=dtype)
        outs, kept = [], []
        for t in range(3):
            outs.append(p.step(images[t], {1: mask} if t == 0 else None)[1])
            kept.append(p.last.probs)
        return outs, kept

    with torch.no_grad():
        plain, plain_kept = track()
        torch.nn.init.normal_(model.refine.net[-1].weight, std=0.5)
        refined, refined_kept = track()
    assert all(o.shape == (2, 64, 96) for o in refined)
    torch.testing.assert_close(refined[0], plain[0])
    assert all((a - b).abs().max() > 1e-2 for a, b in zip(refined[1:], plain[1:]))
    for a, b in zip(refined_kept, plain_kept):
        torch.testing.assert_close(a, b)
