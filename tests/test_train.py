import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vos.config import TrainConfig, load_config
from vos.data.clips import ClipDataset, MixtureSampler
from vos.model import HODOR
from vos.train.cycles import GT as GT_NODE, CycleModel, cycle_paths, name_of
from vos.train.loop import train
from vos.utils import VosError
from vos.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.channels=32", "model.mask_channels=8", "model.heads=4", "model.encoder.layers=1",
        "model.decoder.layers=1", "model.backbone_weights=null", "data.size=[64,64]", "data.sources=[{kind: synthetic, "
        "regime: static, length: 8}]", "log.wandb=disabled", "optim.warmup=2", "ckpt_every=1000"]


def cfg_for(tmp_path, *extra):
    return load_config(TrainConfig, ROOT / "configs/train/smoke.yaml", TINY + [f"out_dir={tmp_path}", *extra])


def test_cycles_are_computed_once_per_path():
    names = [name_of(p) for p in cycle_paths(1, True)]
    assert names == ["0>0", "0>1>0", "0>1", "0>1>2", "0>1>2>1", "0>1>2>1>0"]
    assert "0>1~>2" in [name_of(p) for p in cycle_paths(3, True)]  # frame 2 from [0, 0>1]
    assert len(cycle_paths(1, False)) == 3


def test_each_cycle_node_reads_its_previous_frame(tmp_path):
    """With the short-term path, a node reads the `last` of its last source (the frame processed just before it, as
    at inference), and none when that source is its own frame ([0]->0 would copy the given masks)."""
    cfg = cfg_for(tmp_path, "model.short_term.radius=2")
    model = HODOR(cfg.model)
    seen, step = [], model.step

    def spy(feats, *args, last=None, given_frame=None, **kw):
        out = step(feats, *args, last=last, given_frame=given_frame, **kw)
        seen.append((next(t for t, f in enumerate(split) if f is feats), None if last is None else id(last), id(out.last),
                     None if given_frame is None else id(given_frame)))
        return out

    from vos.train.cycles import CycleGraph, split_features

    batch = _batch(cfg)
    split = split_features(model, batch["images"])
    model.step = spy
    g = CycleGraph(model, split, batch["masks"], batch["valid"], detach_masks=False)
    for path in cycle_paths(3, True):  # [0]->1, [0,1]->2, 2->1, [2,1]->0 among them
        g.logits(path)
    last_of = {out: t for t, _, out, _ in seen}
    reads = [(t, last_of.get(last)) for t, last, _, _ in seen]
    # 0 (given), [0]->0 (none), [0]->1 (frame 0), [0]->1->0 (frame 1), [0,1]->2 (1), 2->1 (2), [2,1]->0 (1)
    assert reads == [(0, None), (0, None), (1, 0), (0, 1), (2, 1), (1, 2), (0, 1)], reads
    # the given frame (the first source): the annotated frame going forward, the turning frame coming back; never
    # frame 0's given masks on the way back to it
    given = [(t, last_of.get(g)) for t, _, _, g in seen]
    assert given == [(0, None), (0, None), (1, 0), (0, 1), (2, 0), (1, 2), (0, 2)], given


def test_carry_dropout_shows_an_object_absent_from_the_previous_frame_but_leaves_the_given_read(tmp_path):
    """cycles.carry_dropout=1: every `last` a node reads has its objects zeroed (background and keys as the source
    left them), while the given frame it reads is the source's own; 0: `last` is passed as it is."""
    from vos.train.cycles import CycleGraph, split_features

    cfg = cfg_for(tmp_path, "model.short_term.radius=2", "model.short_term.given_topk=4")
    model = HODOR(cfg.model)
    batch = _batch(cfg)
    split = split_features(model, batch["images"])
    step, outs, reads = model.step, [], []

    def spy(feats, *args, last=None, given_frame=None, **kw):
        out = step(feats, *args, last=last, given_frame=given_frame, **kw)
        outs.append(out.last)
        reads.append((last, given_frame))
        return out

    model.step = spy
    n1 = ((GT_NODE,), 1)
    for chance in (0.0, 1.0):
        outs.clear()
        reads.clear()
        CycleGraph(model, split, batch["masks"], batch["valid"], False, carry_dropout=chance).logits(((GT_NODE, n1), 2))
        (_, _), (last1, given1), (last2, given2) = reads  # 0, [0]->1 (reads frame 0), [0,1]->2 (reads frame 1)
        assert given1 is outs[0] and given2 is outs[0] and outs[0].masks[:, 1:].sum() > 0
        for read, source in ((last1, outs[0]), (last2, outs[1])):
            assert read.keys is source.keys and torch.equal(read.masks[:, 0], source.masks[:, 0])
            if chance == 0:
                assert read is source
            else:
                assert source.masks[:, 1:].sum() > 0 and not read.masks[:, 1:].any()


def test_mixture_weights_must_sum_to_one(tmp_path):
    cfg = cfg_for(tmp_path, "data.sources=[{kind: synthetic, weight: 0.5}, {kind: synthetic, weight: 0.4}]")
    with pytest.raises(VosError, match="sum to 1"):
        ClipDataset(cfg.data.sources, cfg.data.size, 2)


def _batch(cfg, step=0):
    ds = ClipDataset(cfg.data.sources, cfg.data.size, cfg.data.max_objects, clip_len=cfg.data.clip_len)
    items = [ds[k] for k in next(iter(MixtureSampler(ds, 2, 0, 0, step, step + 1)))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_a_few_iterations_lower_the_loss(tmp_path):
    cfg = cfg_for(tmp_path)
    torch.manual_seed(0)
    model = HODOR(cfg.model)
    cyc = CycleModel(model, detach_masks=False, long_cycles=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch = _batch(cfg)
    losses = []
    for i in range(15):
        loss, parts, _ = cyc(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def _record_encoded_masks(model) -> list:
    """Wrap model.encode so that every mask it encodes is recorded (keeping its gradient); returns the record."""
    seen, encode = [], model.encode

    def spy(feats, masks, valid=None):
        if masks.requires_grad:
            masks.retain_grad()
        seen.append(masks)
        return encode(feats, masks, valid)

    model.encode = spy
    return seen


@pytest.mark.parametrize("detach", [False, True])
def test_detach_masks_controls_gradient_to_frame1_mask(tmp_path, detach):
    cfg = cfg_for(tmp_path)
    torch.manual_seed(0)
    model = HODOR(cfg.model)
    batch = _batch(cfg)
    batch["has_mask"][:, 1:] = False  # sparse: only frame 0 is supervised
    seen = _record_encoded_masks(model)
    loss, parts, _ = CycleModel(model, detach, long_cycles=False)(batch, 0)
    assert set(parts) == {"0>0", "0>1>0"}
    loss.backward()
    assert len(seen) == 2  # the annotated frame 0, then the predicted frame 1
    frame1 = seen[1]
    if detach:
        assert not frame1.requires_grad
    else:
        assert frame1.grad is not None and frame1.grad.abs().sum() > 0


def test_resume_gives_the_same_weights(tmp_path):
    full = train(cfg_for(tmp_path / "a", "optim.steps=4"))
    half = train(cfg_for(tmp_path / "b", "optim.steps=4"), stop_after=2)
    assert load_checkpoint(half)["step"] == 2
    resumed = train(cfg_for(tmp_path / "b", "optim.steps=4"), resume=str(half))
    a, b = load_checkpoint(full)["model"], load_checkpoint(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(Path(half).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(cfg_for(tmp_path / "c", "optim.steps=4"), resume=str(bad))


def test_nonfinite_losses_stop_the_run(tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, "optim.steps=10", "optim.max_nonfinite=3")
    monkeypatch.setattr(CycleModel, "forward", lambda self, b, i: (torch.tensor(float("nan"), requires_grad=True), {}, {}))
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(VosError, match="3 non-finite"):
        train(cfg)


def _smoke_cmd(out, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/train/smoke.yaml"), *TINY,
            f"out_dir={out}", *extra]


@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "process-group-with-a-loader-worker"])
def test_sigterm_leaves_a_loadable_checkpoint(tmp_path, to_group):
    """SIGTERM to the trainer, or to its whole process group (Ctrl-C, a cluster's pre-emption, pkill -f): the
    loader workers must not die first and take the main process down before it checkpoints."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(_smoke_cmd(tmp_path, "optim.steps=100000", f"data.workers={int(to_group)}"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (tmp_path / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(4)
    if to_group:
        os.killpg(p.pid, signal.SIGTERM)
    else:
        p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out[-2000:]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] >= 1 and "optimizer" in state and state["config"]["out_dir"] == str(tmp_path)


def test_ddp_two_processes_hold_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"] + _smoke_cmd(tmp_path, "optim.steps=3")[1:]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sums = sorted(line.split()[-1] for line in r.stdout.splitlines() if "weights checksum" in line)
    assert len(sums) == 2 and sums[0] == sums[1]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_wandb_offline_logs_keys_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = cfg_for(tmp_path, "optim.steps=4", "log.wandb=offline", "log.every=2", "log.image_every=2")
    import wandb

    train(cfg)
    # run.finish() returns once the exit record is acknowledged; wandb's service may still be writing the run's
    # transaction log (seen on a loaded CI machine: only the file header was on disk). Tearing the service
    # down waits for it to close its streams; then wait (bounded) for the records to reach the disk.
    wandb.teardown()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    keys = (b"loss/0>0", b"grad_norm", b"lr", b"clips_per_s", b"data_wait_s", b"iou/object1", b"dice/object1")
    deadline = time.time() + 60
    while True:
        data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        if all(k in data for k in keys) or time.time() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key in data, f"{key!r} not in the offline run's log ({len(data)} bytes)"
    assert list(runs[0].rglob("media/images/*.png"))


def test_validation_runs_inference_as_infer_py_does(tmp_path):
    """Validation runs inference exactly as infer.py does with val.infer, and scores it with vos.eval: the
    shipped model on a moving square scores what infer.py's runner + evaluation give, and high."""
    from vos.checkpoint import load_models
    from vos.data.synthetic import square_clip, write_davis
    from vos.eval import evaluate_dataset
    from vos.inference.run import DEFAULT_CHECKPOINT, Job, Runner
    from vos.train.validate import validate

    root = write_davis(tmp_path / "val", {"v": square_clip([(40, 60, 8, 3)], n=8, size=56)}, split="dev")
    cfg = cfg_for(tmp_path, f"val.root={root}", "val.layout=davis2017", "val.infer.window=2")
    model = load_models(DEFAULT_CHECKPOINT, torch.device("cpu"))[0]
    table = validate(model, cfg, torch.device("cpu"))
    Runner(cfg.val.infer, models=[model]).run(Job("v", root / "JPEGImages/480p/v",
                                                  {"00000": root / "Annotations/480p/v/00000.png"}),
                                              tmp_path / "o", progress=False)
    expected, _ = evaluate_dataset(root, "davis2017", "dev", tmp_path / "o")
    assert table["J&F-Mean"] == pytest.approx(expected["J&F-Mean"]) and table["J&F-Mean"] > 0.85


def test_static_sources_coco_and_folder(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from vos.data import write_mask
    from vos.data.synthetic import make_clip

    frames, masks = make_clip(4, n_frames=1, size=(80, 100), n_objects=2, late_objects=0, leave_and_return=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(frames[0]).save(tmp_path / "images" / "a.jpg")
    write_mask(tmp_path / "masks" / "a.png", masks[0])
    anns = []
    for k in (1, 2):
        ys, xs = np.nonzero(masks[0] == k)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        anns.append({"id": k, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(len(xs)),
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 80, "width": 100}], "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    for src in (f"{{kind: coco, root: {tmp_path / 'images'}, coco_annotations: {tmp_path / 'coco.json'}}}",
                f"{{kind: static_folder, root: {tmp_path}}}"):
        cfg = cfg_for(tmp_path, f"data.sources=[{src}]")
        ds = ClipDataset(cfg.data.sources, cfg.data.size, 2)
        sample = ds[(0, 0, 123)]
        assert sample["images"].shape == (3, 3, 64, 64) and sample["valid"].sum() >= 1
        assert sample["has_mask"].all() and sample["masks"][:, 0].sum() > 0
        # image and masks are warped together: the pixels under object 1's mask look like object 1 in the photo
        # (mean colour), not like the rest of it
        img, m = sample["images"][0].permute(1, 2, 0).numpy() * 255, sample["masks"][0, 0].numpy() > 0.5
        inside, outside = frames[0][masks[0] == 1].mean(0), frames[0][masks[0] != 1].mean(0)
        got = img[m].mean(0)
        assert np.abs(got - inside).sum() < np.abs(got - outside).sum(), (got, inside, outside)


def test_dense_training_on_a_teacher_s_pseudo_labels(tmp_path):
    """regime dense with pseudo_labels: the annotated frame keeps its own mask, every other frame reads the teacher's
    PNG; a missing or incomplete folder, or another regime, is a clear error."""
    from vos.data import write_mask
    from vos.data.sources import units_from_source
    from vos.data.synthetic import make_clip, write_davis

    root = write_davis(tmp_path / "d", {"v": make_clip(0, n_frames=6, size=(64, 96), n_objects=1, late_objects=0)},
                       split="train", layout="davis2016")
    teacher = tmp_path / "teacher"
    (teacher / "v").mkdir(parents=True)
    for t in range(6):
        ids = np.zeros((64, 96), np.uint8)
        ids[t: t + 10, 5:20] = 1  # not the real object: where each mask comes from shows
        write_mask(teacher / "v" / f"{t:05d}.png", ids)
    src = cfg_for(tmp_path, f"data.sources=[{{kind: davis2016, root: {root}, regime: dense, "
                            f"pseudo_labels: {teacher}}}]").data.sources[0]
    (unit,) = units_from_source(src)
    gt = units_from_source(cfg_for(tmp_path, f"data.sources=[{{kind: davis2016, root: {root}, regime: dense}}]")
                           .data.sources[0])[0]
    assert unit.dense and unit.annotated == 0
    np.testing.assert_array_equal(unit.load_mask(0), gt.load_mask(0))
    for t in (1, 5):
        assert unit.load_mask(t)[t: t + 10, 5:20].all() and unit.load_mask(t).sum() == 150
    (teacher / "v" / "00003.png").unlink()
    with pytest.raises(VosError, match="pseudo-labels incomplete: 1 of 6 masks of 'v'"):
        units_from_source(src)
    with pytest.raises(VosError, match="pseudo-label folder not found"):
        units_from_source(cfg_for(tmp_path, f"data.sources=[{{kind: davis2016, root: {root}, regime: dense, "
                                            f"pseudo_labels: {tmp_path / 'nothing'}}}]").data.sources[0])
    with pytest.raises(VosError, match="need regime: dense"):
        units_from_source(cfg_for(tmp_path, f"data.sources=[{{kind: davis2016, root: {root}, regime: sparse, "
                                            f"pseudo_labels: {teacher}}}]").data.sources[0])


def test_sparse_regime_reads_only_the_annotated_mask(tmp_path):
    import json

    from vos.data.synthetic import make_clip, write_davis

    root = write_davis(tmp_path / "d", {"v": make_clip(0, n_frames=8, size=(64, 96), n_objects=1, late_objects=0)},
                       split="train", layout="davis2016")
    listed = tmp_path / "ann.json"
    listed.write_text(json.dumps({"v": "00003"}))
    cfg = cfg_for(tmp_path, f"data.sources=[{{kind: davis2016, root: {root}, regime: sparse, annotated: {listed}}}]")
    ds = ClipDataset(cfg.data.sources, cfg.data.size, 1)
    assert ds.units[0][0].annotated == 3
    with pytest.raises(VosError, match="non-annotated"):
        ds.units[0][0].load_mask(4)
    s = ds[(0, 0, 5)]
    assert s["has_mask"].tolist() == [True, False, False] and s["masks"][1:].sum() == 0


def test_init_from_swaps_the_pixel_block_and_keeps_the_rest(tmp_path):
    """A new pixel block and a new anchor check start fresh, a finer background grid from the coarse one's queries;
    everything else comes from the checkpoint."""
    base = load_checkpoint(train(cfg_for(tmp_path / "a", "optim.steps=1")))["model"]
    swapped = train(cfg_for(tmp_path / "b", "optim.steps=1", "optim.lr=0.0", f"init_from={tmp_path / 'a/checkpoint.pt'}",
                            "model.decoder.pixel_block=efficient", "model.decoder.anchor_check=true",
                            "model.bg_grid=5"))
    new = load_checkpoint(swapped)["model"]
    shared = [k for k in base if k in new and ".block." not in k and k != "bg_query"]
    assert shared and all(torch.equal(base[k], new[k]) for k in shared)
    assert new["bg_query"].shape[0] == 25 and torch.equal(new["bg_query"][24], base["bg_query"][8])  # a finer grid
    assert any(".block.q." in k for k in new) and not any(".block.dw." in k for k in new)
    assert any(k.startswith("anchor_check.") for k in new)
    with pytest.raises(VosError, match="does not match"):
        train(cfg_for(tmp_path / "c", "optim.steps=1", f"init_from={tmp_path / 'a/checkpoint.pt'}", "model.channels=16"))


def test_composite_regime_pastes_the_object_onto_another_video(tmp_path):
    import numpy as np

    from vos.data.clips import make_sample
    from vos.data.sources import Annotated

    red, blue = np.zeros((96, 128, 3), np.uint8), np.zeros((96, 128, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    mask = np.zeros((96, 128), np.uint8)
    mask[30:60, 40:80] = 1
    fg = Annotated(1, lambda t: red, lambda t: mask, 0, False)
    bg = Annotated(5, lambda t: blue, lambda t: pytest.fail("background masks are never read"), 0, False)
    s = make_sample(fg, "composite", (64, 64), 1, 12, seed=3, background=bg)
    img, m = (s["images"] * 255).round(), s["masks"][:, 0] > 0
    assert s["has_mask"].all() and all(m[t].sum() > 50 for t in range(3))
    inside, outside = img[0][:, m[0]], img[0][:, ~m[0]]
    assert (inside[0] > 100).float().mean() > 0.95 and (outside[2] > 100).float().mean() > 0.95
    assert not torch.equal(m[1], m[0])  # the object moved against the background
    with pytest.raises(VosError, match=r"'stattic', expected one of \[static, composite, merge, sparse, dense\]"):
        cfg_for(tmp_path, "data.sources=[{kind: synthetic, regime: stattic, length: 2}]")  # at load, not later
    cfg = cfg_for(tmp_path, "data.sources=[{kind: synthetic, regime: composite, length: 2}]")
    assert ClipDataset(cfg.data.sources, cfg.data.size, 1)[(0, 0, 7)]["valid"].all()


def test_export_averages_checkpoints_into_a_loadable_fp16_model(tmp_path):
    from vos.checkpoint import export, load_models

    a = train(cfg_for(tmp_path / "a", "optim.steps=1"))
    b = train(cfg_for(tmp_path / "b", "optim.steps=1", "seed=1"))
    export([str(a), str(b)], str(tmp_path / "soup.pt"))
    soup, wa, wb = (load_checkpoint(p)["model"] for p in (tmp_path / "soup.pt", a, b))
    floats = [k for k in soup if soup[k].is_floating_point()]
    assert floats and all(soup[k].dtype == torch.float16 for k in floats)
    assert any(not torch.equal(wa[k], wb[k]) for k in floats)
    assert all(torch.allclose(soup[k].float(), (wa[k] + wb[k]) / 2, atol=1e-3, rtol=1e-3) for k in floats)
    assert len(load_models(tmp_path / "soup.pt", torch.device("cpu"))) == 1
    c = train(cfg_for(tmp_path / "c", "optim.steps=1", "model.channels=16"))
    with pytest.raises(VosError, match="architectures differ"):
        export([str(a), str(c)], str(tmp_path / "bad.pt"))
    assert not (tmp_path / "bad.pt").exists()


def test_a_frozen_backbone_is_left_out_and_restored_from_its_package(tmp_path):
    from vos.checkpoint import CheckpointError, load_models

    ckpt = train(cfg_for(tmp_path / "a", "optim.steps=1", "model.freeze_backbone=true",
                         "model.backbone_weights=package"))
    saved = load_checkpoint(ckpt)["model"]
    assert not any(k.startswith("backbone.") and k.endswith(".weight") for k in saved)
    (model,) = load_models(ckpt, torch.device("cpu"))
    cfg = cfg_for(tmp_path / "a", "model.backbone_weights=package").model
    reference = HODOR(cfg)
    reference.load_state_dict(saved, strict=False)
    reference = reference.eval().fuse_for_inference().state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    no_source = train(cfg_for(tmp_path / "b", "optim.steps=1", "model.freeze_backbone=true"))
    with pytest.raises(CheckpointError, match="no backbone weights"):
        load_models(no_source, torch.device("cpu"))


def _stub_forward(losses):
    """A CycleModel.forward whose successive calls return the given loss values (tied to the weights)."""
    calls = iter(losses)

    def forward(self, batch, iteration):
        tie = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0
        loss = tie + next(calls)
        return loss, {"0>0": loss}, {}
    return forward


def test_accumulation_checks_every_micro_batch_and_logs_the_mean(tmp_path, monkeypatch):
    from vos.train.loop import Trainer

    trainer = Trainer(cfg_for(tmp_path, "optim.batch_size=2", "optim.effective_batch=4", "optim.steps=4"))
    assert trainer.accum == 2
    batch = _batch(trainer.cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    monkeypatch.setattr(CycleModel, "forward", _stub_forward([float("nan"), 1.0]))
    with pytest.warns(UserWarning, match="step skipped"):
        assert trainer.train_step([batch, batch]) is None  # NaN in the FIRST micro-batch: the whole step is skipped
    assert trainer.skipped == 1 and trainer.step == 1
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    monkeypatch.setattr(CycleModel, "forward", _stub_forward([1.0, 3.0]))
    logs = trainer.train_step([batch, batch])
    assert float(logs["loss"]) == pytest.approx(2.0) and float(logs["loss/0>0"]) == pytest.approx(2.0)
    monkeypatch.undo()
    logs = trainer.train_step([batch, batch])  # real losses: the weights move
    assert logs is not None and any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items()
                                    if v.is_floating_point())


def test_time_waiting_for_data_is_counted(tmp_path):
    """The loop adds the time spent waiting for each batch to data_seconds (what `vos.bench train` and the
    logs report, to see whether data loading starves the step)."""
    from vos.train.loop import Trainer

    def slow():
        for i in range(3):
            time.sleep(0.1)
            yield i

    t = Trainer(cfg_for(tmp_path, "optim.steps=2"))
    assert list(t._timed(slow())) == [0, 1, 2]
    assert 0.3 <= t.data_seconds < 5


def test_learning_rate_schedule(tmp_path):
    from vos.train.loop import lr_factor

    cfg = cfg_for(tmp_path, "optim.steps=110", "optim.warmup=10")
    assert [lr_factor(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(60, cfg) == pytest.approx(0.5)
    assert lr_factor(110, cfg) == pytest.approx(0.0, abs=1e-9)
    step = cfg_for(tmp_path, "optim.schedule=step", "optim.warmup=0", "optim.step_milestones=[5,8]")
    assert [lr_factor(s, step) for s in (4, 5, 8)] == pytest.approx([1.0, 0.1, 0.01])
    # the trainer applies it: after 3 of 110 steps with warm-up 10, lr = base * 4/10
    from vos.train.loop import Trainer

    t = Trainer(cfg_for(tmp_path, "optim.steps=110", "optim.warmup=10", "optim.lr=1e-3"))
    batch = _batch(t.cfg)
    for _ in range(3):
        t.train_step([batch])
    assert t.sched.get_last_lr()[0] == pytest.approx(1e-3 * 0.4)
    # the modules that start as no-ops (short-term path, anchor check) have their own peak lr, on the same schedule
    t = Trainer(cfg_for(tmp_path, "optim.steps=110", "optim.warmup=10", "optim.lr=1e-3", "model.short_term.radius=2",
                        "model.decoder.anchor_check=true", "optim.short_term_lr=1e-2"))
    path = {id(p) for m in (t.model.short_term, t.model.anchor_check) for p in m.parameters()}
    assert [all(id(p) in path for p in g["params"]) for g in t.opt.param_groups] == [False, True]
    assert len(t.opt.param_groups[1]["params"]) == len(path)
    t.train_step([_batch(t.cfg)])
    assert t.sched.get_last_lr() == pytest.approx([1e-3 * 0.2, 1e-2 * 0.2])


def test_dense_and_sparse_clips_are_augmented_alike(tmp_path):
    from vos.data.augment import AUGMENT, augment_for

    assert AUGMENT["dense"] == AUGMENT["sparse"]
    assert augment_for("sparse", "static") == AUGMENT["static"]
    with pytest.raises(VosError, match="unknown augmentation"):
        cfg = cfg_for(tmp_path, "data.sources=[{kind: synthetic, regime: dense, augment: strong}]")
        ClipDataset(cfg.data.sources, cfg.data.size, 1)
    # same unit, same seed: the dense clip's images equal the sparse clip's (only supervision differs)
    cfg = cfg_for(tmp_path, "data.sources=[{kind: synthetic, regime: sparse, length: 2}]")
    sparse = ClipDataset(cfg.data.sources, cfg.data.size, 1)[(0, 1, 11)]
    cfg = cfg_for(tmp_path, "data.sources=[{kind: synthetic, regime: dense, length: 2}]")
    dense = ClipDataset(cfg.data.sources, cfg.data.size, 1)[(0, 1, 11)]
    assert torch.equal(sparse["images"], dense["images"])
    assert sparse["has_mask"].tolist() == [True, False, False] and dense["has_mask"].all()


def test_per_object_scores_show_a_collapse_onto_one_id():
    from vos.train.cycles import per_object_scores

    target = torch.zeros(2, 2, 8, 8)
    target[:, 0, :4], target[:, 1, 4:] = 1, 1  # object 1 on top, object 2 below
    logits = torch.full((2, 1 + 2, 8, 8), -10.0)  # background, two objects
    logits[:, 1] = 10.0  # every pixel predicted as object 1: object 2 has collapsed onto it
    iou, dice, count = per_object_scores(logits, target, torch.tensor([[True, True], [True, False]]))
    assert count.tolist() == [2, 1]
    assert iou.tolist() == pytest.approx([2 * 0.5, 0.0])  # object 1: half of what it claims; object 2: nothing
    assert dice[1] / count[1] > 0.9 and dice[0] / count[0] < 0.5


def _one_colour_unit(channel: int, box: tuple[int, int, int, int]):
    """An annotated image: a bright box (y0, y1, x0, x1) of one colour channel on a dark field of it, as object 1."""
    from vos.data.sources import Annotated

    img, mask = np.zeros((96, 128, 3), np.uint8), np.zeros((96, 128), np.uint8)
    img[..., channel] = 60
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1, channel] = 250
    mask[y0:y1, x0:x1] = 1
    return Annotated(1, lambda t: img, lambda t: mask, 0, True)


def test_merge_regime_pastes_partner_objects_as_objects_or_distractors():
    import numpy as np

    from vos.data.clips import make_sample

    red, blue = _one_colour_unit(0, (20, 80, 20, 100)), _one_colour_unit(2, (30, 70, 40, 90))
    labelled = distractor = 0
    for seed in range(40):
        s = make_sample(red, "merge", (64, 64), 3, 12, seed=seed, background=blue)
        img, m, valid = s["images"] * 255, s["masks"] > 0, s["valid"]
        assert s["has_mask"].all() and valid[0] and m[0, 0].sum() >= 64
        assert not (m.sum(1) > 1).any()  # every pixel belongs to one object at most
        blue_px = img[:, 2] > img[:, 0] + 40  # pasted partner pixels (colour jitter keeps the dominant channel)
        red_px = img[:, 0] > img[:, 2] + 40
        assert not (m[:, 0] & blue_px).any()  # the first object never owns a pasted pixel
        if valid[1]:
            labelled += 1
            own = m[:, 1]
            assert (own & blue_px).sum() > 0.7 * own.sum() or (own & red_px).sum() > 0.7 * own.sum()
        elif blue_px[0].sum() > 64:
            distractor += 1
            assert not m[0, :, blue_px[0]].any()  # an unlabelled distractor is background
    assert labelled >= 5 and distractor >= 5


def test_small_pastes_partner_objects_at_one_to_three_percent_of_the_frame_as_objects():
    """Augment.small: the pasted objects are scaled down to SMALL_SHARE of the frame (cut where they leave it) and,
    unless the partner is the clip itself, are objects to track; without it the clips are drawn as before."""
    import dataclasses

    from vos.data.augment import AUGMENT
    from vos.data.clips import SMALL_SHARE, make_sample

    red, blue = _one_colour_unit(0, (20, 80, 20, 100)), _one_colour_unit(2, (30, 70, 40, 90))
    size = (96, 96)
    small = dataclasses.replace(AUGMENT["merge"], small=1.0)
    shares, labelled, plain = [], 0, []
    for seed in range(30):
        s = make_sample(red, "merge", size, 3, 12, seed=seed, background=blue, aug=small)
        img, m = s["images"] * 255, s["masks"] > 0
        blue_px = (img[0, 2] > img[0, 0] + 40).float().mean().item()
        if blue_px > 0:
            shares.append(blue_px)
        if s["valid"][1] and (m[0, 1] & (img[0, 2] > img[0, 0] + 40)).sum() > 0.7 * m[0, 1].sum():
            labelled += 1
        plain.append(make_sample(red, "merge", size, 3, 12, seed=seed, background=blue)["images"])
        same = make_sample(red, "merge", size, 3, 12, seed=seed, background=blue, aug=AUGMENT["merge_hide"])
        assert torch.equal(same["images"], make_sample(red, "merge", size, 3, 12, seed=seed, background=blue,
                                                       aug=dataclasses.replace(AUGMENT["merge_hide"], small=0.0))["images"])
    assert len(shares) >= 15 and max(shares) <= SMALL_SHARE[1] * 1.3 and np.median(shares) >= SMALL_SHARE[0] * 0.7
    assert labelled >= 15  # tracked, not distractors (a quarter of partners are the clip itself: look-alikes)
    big = [(p[0, 2] * 255 > p[0, 0] * 255 + 40).float().mean().item() for p in plain]
    assert np.median([b for b in big if b > 0]) > 2 * SMALL_SHARE[1]  # the plain merge pastes them far bigger


def test_a_clip_without_a_mask_at_a_frame_adds_nothing_to_that_frames_loss(tmp_path):
    """Sparse clips: a frame without a mask is left out of its paths' losses (void), exactly as if that clip were
    not in the batch for them."""
    cfg = cfg_for(tmp_path)
    torch.manual_seed(0)
    cyc = CycleModel(HODOR(cfg.model).eval(), detach_masks=False, long_cycles=False)
    batch = _batch(cfg)
    batch["has_mask"] = torch.tensor([[True, True, True], [True, False, False]])
    with torch.no_grad():
        _, both, _ = cyc(batch, 0)
        _, first, _ = cyc({k: v[:1] for k, v in batch.items()}, 0)
    assert both["0>1"] == pytest.approx(first["0>1"].item(), rel=1e-5)  # frame 1 is known only in clip 0
    assert both["0>0"] != pytest.approx(first["0>0"].item(), rel=1e-3)  # frame 0 is known in both


def test_crossing_moves_pasted_objects_over_a_clip_object_and_past_it():
    from vos.data.augment import AUGMENT
    from vos.data.clips import _cross, make_sample

    h = w = 96
    sq = np.zeros((h, w), np.uint8)
    sq[10:20, 10:20] = 3  # a pasted object, id 3, centred at (14.5, 14.5) on every frame
    target = np.zeros((h, w), bool)
    target[40:50, 30:40] = True  # the clip object on frame 1, centre (34.5, 44.5) (x, y)
    imgs = [np.dstack([sq * 80] * 3) for _ in range(3)]
    _, masks = _cross(imgs, [sq] * 3, sq > 0, target)
    centres = [np.argwhere(m == 3).mean(0) for m in masks]  # (y, x)
    assert np.allclose(centres[0], [14.5, 14.5]) and np.allclose(centres[1], [44.5, 34.5])
    assert np.allclose(centres[2], [74.5, 54.5])  # as far past it: a straight line
    _, masks = _cross(imgs, [sq] * 3, sq > 0, np.roll(target, 50, 1))
    assert (masks[2] == 3).sum() < 100  # moved out of the frame: cut, partly or wholly

    assert AUGMENT["merge"].crossing == 0 and AUGMENT["merge_crossing"].crossing > 0

    red, blue = _one_colour_unit(0, (36, 60, 50, 78)), _one_colour_unit(2, (30, 70, 40, 90))  # a small clip object: far to cross
    travel = {}
    for row in ("merge", "merge_crossing"):
        moved = []
        for seed in range(30):
            s = make_sample(red, "merge", (64, 64), 3, 12, seed=seed, background=blue, aug=AUGMENT[row])
            assert not ((s["masks"] > 0).sum(1) > 1).any()
            img = s["images"] * 255
            blue_px = img[:, 2] > img[:, 0] + 40
            if blue_px[0].sum() > 30 and blue_px[1].sum() > 30:
                c = [np.argwhere(b.numpy()).mean(0) for b in blue_px[:2]]
                moved.append(np.hypot(*(c[1] - c[0])))
        travel[row] = np.mean(moved)
    assert travel["merge_crossing"] > travel["merge"] + 3  # pasted objects travel further on frame 1


def test_long_clips_run_forward_then_back_with_a_window_of_recent_frames():
    from vos.train.cycles import GT, WINDOW, chain_paths, frame_of

    paths = chain_paths(5)
    assert [name_of(p) for p in paths] == ["0>0", "0>1", "0>1~>2", "0>1~>2~>3", "0>1~>2~>3~>4", "0>1~>2~>3~>4>3",
                                           "0>1~>2~>3~>4>3~>2", "0>1~>2~>3~>4>3~>2~>1", "0>1~>2~>3~>4>3~>2~>1~>0"]
    forward, backward = paths[1:5], paths[5:]
    for t, (sources, target) in enumerate(forward, 1):  # as inference: the given frame, then frames 1..t-1 in order
        assert target == t and [frame_of(s) for s in sources] == list(range(t))
    for (sources, target) in backward:  # the cycle: frame 0's mask is not read on the way back
        assert GT not in sources and frame_of(sources[-1]) == target + 1
    assert cycle_paths(0, True, 5) == paths and cycle_paths(0, True, 3) == cycle_paths(0, True)
    long = chain_paths(WINDOW + 4)
    assert max(len(p[0]) for p in long) == WINDOW + 1  # the given frame + WINDOW recent ones, as InferConfig.window
    assert long[-1][1] == 0


def test_long_clips_train_through_the_chain(tmp_path):
    """A 5-frame clip: every frame with a mask is supervised on the way out and back; a sparse clip (frame 0 only)
    still gets the cycle's loss at frame 0, with gradients reaching frame 4's predicted masks."""
    cfg = cfg_for(tmp_path, "data.clip_len=5")
    torch.manual_seed(0)
    model = HODOR(cfg.model)
    batch = _batch(cfg)
    assert batch["images"].shape[1] == 5 and batch["masks"].shape[1] == 5
    loss, parts, _ = CycleModel(model, False, True)(batch, 0)
    assert len(parts) == 9 and torch.isfinite(loss)
    batch["has_mask"][:, 1:] = False
    seen = _record_encoded_masks(model)
    loss, parts, _ = CycleModel(model, False, True)(batch, 0)
    assert set(parts) == {"0>0", "0>1~>2~>3~>4>3~>2~>1~>0"}
    loss.backward()
    assert seen[4].grad is not None and seen[4].grad.abs().sum() > 0  # frame 4 (the turn), through the way back


def test_a_share_of_steps_has_long_clips(tmp_path):
    """data.long_clip_share: whole batches of long_clip_len frames on about that share of the steps, the other
    steps' keys exactly those of a run without long clips (so their clips are too), and both lengths train."""
    cfg = cfg_for(tmp_path, "data.clip_len=4", "data.long_clip_share=0.5", "data.long_clip_len=6")
    ds = ClipDataset(cfg.data.sources, cfg.data.size, cfg.data.max_objects, clip_len=cfg.data.clip_len)
    mixed = list(MixtureSampler(ds, 2, 0, 0, 0, 40, cfg.data.long_clip_share, cfg.data.long_clip_len))
    plain = list(MixtureSampler(ds, 2, 0, 0, 0, 40))
    lengths = [{k[3] for k in batch} for batch in mixed]
    assert all(len(s) == 1 for s in lengths)
    assert 10 <= sum(s == {6} for s in lengths) <= 30 and {4} in lengths
    assert [[k[:3] for k in b] for b in mixed] == [[k[:3] for k in b] for b in plain]
    assert all(k[3] == 4 for b in plain for k in b)
    model = HODOR(cfg.model)
    for batch in (mixed[lengths.index({6})], mixed[lengths.index({4})]):
        items = [ds[k] for k in batch]
        images = torch.stack([it["images"] for it in items])
        assert images.shape[1] == batch[0][3]
        loss, _, _ = CycleModel(model, False, True)({k: torch.stack([it[k] for it in items]) for k in items[0]}, 0)
        assert torch.isfinite(loss)


def test_sparse_long_clips_need_enough_frames_in_reach():
    from vos.data.clips import make_sample

    unit = _one_colour_unit(0, (20, 40, 20, 40))
    video = type(unit)(8, unit.load_frame, unit.load_mask, 0, False)
    s = make_sample(video, "sparse", (64, 64), 1, 12, seed=0, clip_len=6)
    assert s["images"].shape[0] == 6 and s["has_mask"].tolist() == [True] + [False] * 5
    with pytest.raises(VosError, match="clip_len=6, max_gap=3"):
        make_sample(video, "sparse", (64, 64), 1, 3, seed=0, clip_len=6)


def test_pasted_objects_leave_the_frame_and_come_back():
    from vos.data.augment import AUGMENT
    from vos.data.clips import _leave_and_return, make_sample

    h = w = 96
    sq = np.zeros((h, w), np.uint8)
    sq[40:55, 10:25] = 3  # nearest to the left edge
    imgs = [np.dstack([sq * 80] * 3) for _ in range(6)]
    _, masks = _leave_and_return(imgs, [sq] * 6, sq > 0, np.random.default_rng(0))
    area = [int((m == 3).sum()) for m in masks]
    assert area[0] == area[5] == 225 and area[2] == area[3] == 0  # in, out for the middle frames, back
    centres = [np.argwhere(m == 3).mean(0) for m in masks[:2]]
    assert area[1] > 0 and area[4] > 0 and np.hypot(*(centres[1] - centres[0])) > 10  # on its way out, and back

    assert AUGMENT["merge_leave"].leave > 0
    red, blue = _one_colour_unit(0, (20, 80, 20, 100)), _one_colour_unit(2, (30, 70, 40, 90))
    left = 0
    for seed in range(30):
        s = make_sample(red, "merge", (64, 64), 3, 12, seed=seed, background=blue, aug=AUGMENT["merge_leave"],
                        clip_len=6)
        m = s["masks"] > 0
        assert s["images"].shape[0] == 6 and not (m.sum(1) > 1).any()
        if s["valid"][1] and m[0, 1].sum() > 20 and m[5, 1].sum() > 20 and not m[2:4, 1].any():
            left += 1  # a labelled pasted object gone in the middle frames, there at both ends
    assert left >= 3


def test_an_object_is_hidden_on_the_middle_frames_and_back_on_the_last():
    from vos.data.augment import AUGMENT
    from vos.data.clips import _hide, make_sample

    sq = np.zeros((64, 80), np.uint8)
    sq[20:40, 10:22] = 2
    sq[5:12, 60:75] = 1
    imgs = [np.full((64, 80, 3), 200, np.uint8) for _ in range(5)]
    cover = [np.full((64, 80, 3), 7, np.uint8) for _ in range(5)]
    out, masks = _hide(imgs, [sq] * 5, 2, cover)
    assert [int((m == 2).sum()) for m in masks] == [240, 0, 0, 0, 240]  # gone on the middle frames, back on the last
    assert all((m == 1).sum() == 105 for m in masks)  # the other object untouched
    assert (out[2][sq == 2] == 7).all() and (out[0] == 200).all() and (out[4] == 200).all()  # covered, not erased
    assert (masks[2][out[2][..., 0] == 7] == 0).all()  # the occluder is background

    assert AUGMENT["merge_hide"].hide > 0 and AUGMENT["merge_leave"].hide == 0
    red, blue = _one_colour_unit(0, (40, 56, 50, 70)), _one_colour_unit(2, (30, 70, 40, 90))  # red: small enough

    def hidden(aug) -> int:  # clips where a labelled object is there at both ends and gone in between
        n = 0
        for seed in range(30):
            s = make_sample(red, "merge", (64, 64), 3, 12, seed=seed, background=blue, aug=aug, clip_len=4)
            m = s["masks"] > 0
            n += any(s["valid"][k] and m[0, k].sum() > 20 and m[3, k].sum() > 20 and not m[1:3, k].any()
                     for k in range(3))
        return n

    plain = AUGMENT["merge"]
    assert hidden(dataclasses.replace(plain, hide=1.0)) >= 20 and hidden(plain) <= 2


def test_a_look_alike_can_stand_in_front_of_the_hidden_object():
    """Augment.hide_alike: the occluder of a hidden object is another object of the image (or the object itself),
    enlarged over where the object is, in front of the cover, labelled background; the look-alike itself keeps its
    place and id; only rows that set hide_alike draw it."""
    from vos.data.augment import AUGMENT
    from vos.data.clips import _hide, make_sample

    sq = np.zeros((64, 80), np.uint8)
    sq[20:40, 10:22] = 2  # the object to hide, box 20 x 12
    sq[5:12, 60:75] = 1  # the look-alike, box 7 x 15
    imgs = [np.full((64, 80, 3), 200, np.uint8) for _ in range(5)]
    for img in imgs:
        img[5:12, 60:75] = (0, 250, 0)
    cover = [np.full((64, 80, 3), 7, np.uint8) for _ in range(5)]
    out, masks = _hide(imgs, [sq] * 5, 2, cover, alike=1)
    assert [int((m == 2).sum()) for m in masks] == [240, 0, 0, 0, 240] and all((m == 1).sum() == 105 for m in masks)
    green = (out[2][..., 1] == 250) & (out[2][..., 0] == 0)
    assert green[sq == 2].mean() > 0.9  # the look-alike stands over the whole object
    assert green.sum() > 3 * 105 and green[:, :40].sum() > 2 * 105  # enlarged, and there, not in its own place only
    assert (masks[2][green & (sq != 1)] == 0).all() and (out[2][sq == 2] != 200).all()  # background; nothing shows
    assert (out[0] == imgs[0]).all() and (out[4] == imgs[4]).all()

    assert AUGMENT["merge_hide_alike"].hide_alike > 0 and AUGMENT["merge_hide"].hide_alike == 0
    red, blue = _one_colour_unit(0, (40, 56, 50, 70)), _one_colour_unit(2, (30, 70, 40, 90))

    def alike(aug) -> int:  # clips where the red object is gone in the middle and more bright red shows than before
        n = 0
        for seed in range(30):
            s = make_sample(red, "merge", (64, 64), 3, 12, seed=seed, background=blue, aug=aug, clip_len=4)
            m, img = s["masks"] > 0, s["images"] * 255
            bright_red = ((img[:, 0] > img[:, 2] + 40) & (img[:, 0] > 150)).sum((1, 2))
            n += any(s["valid"][k] and m[0, k].sum() > 20 and m[3, k].sum() > 20 and not m[1:3, k].any()
                     for k in range(3)) and bright_red[1] > 1.5 * bright_red[0]  # the red box, enlarged
        return n

    plain = dataclasses.replace(AUGMENT["merge"], hide=1.0)
    assert alike(dataclasses.replace(plain, hide_alike=1.0)) >= 18 and alike(plain) <= 2


def test_pasted_objects_stand_against_a_clip_object_from_the_first_frame():
    """Augment.touch: one shift for every frame puts the pasted objects against the clip object, over its edge (they
    cover at most TOUCH_COVER's upper share of it, and touch it), from any side; a small one ends half over it; in
    merged clips the pasted objects then touch the clip's object on frame 0 far more often than without it."""
    import cv2

    from vos.data.augment import AUGMENT
    from vos.data.clips import TOUCH_COVER, _touch, make_sample

    h, w = 96, 128
    target = np.zeros((h, w), bool)
    target[30:70, 40:90] = True  # 2,000 px
    sq = np.zeros((h, w), np.uint8)
    sq[5:25, 5:25] = 3  # 400 px, away from the target
    imgs = [np.dstack([sq * 80] * 3) for _ in range(3)]
    sides = set()
    for seed in range(20):
        _, masks = _touch(imgs, [sq] * 3, sq > 0, target, np.random.default_rng(seed))
        p = masks[0] == 3
        over = int((p & target).sum())
        near = cv2.dilate(p.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & target
        assert over <= TOUCH_COVER[1] * target.sum() and near.any(), seed  # over its edge, not on top of it
        assert all((m == 3).sum() == p.sum() for m in masks[1:])  # the same shift on every frame
        assert np.allclose(np.argwhere(masks[2] == 3).mean(0), np.argwhere(p).mean(0))
        cy, cx = np.argwhere(p).mean(0)
        sides.add((cy > 50, cx > 65))
    assert len(sides) >= 3  # from several sides
    dot = np.zeros((h, w), np.uint8)
    dot[2:6, 2:6] = 3  # 16 px: would not cover 5 % of the target even inside it
    _, masks = _touch([np.dstack([dot] * 3)] * 3, [dot] * 3, dot > 0, target, np.random.default_rng(0))
    assert 0 < int(((masks[0] == 3) & target).sum()) <= 8  # half over its edge, not swallowed

    red, blue = _one_colour_unit(0, (40, 56, 50, 70)), _one_colour_unit(2, (10, 30, 10, 34))

    def touching(aug) -> int:  # clips whose pasted (blue) pixels touch the clip's object on frame 0 (of 30; a quarter
        # of merged clips paste the image's own objects: no blue)
        n = 0
        for seed in range(30):
            s = make_sample(red, "merge", (64, 64), 3, 12, seed=seed, background=blue, aug=aug, clip_len=4)
            assert not ((s["masks"] > 0).sum(1) > 1).any()
            img = (s["images"][0] * 255).numpy()
            pasted, red_obj = (img[2] > 150).astype(np.uint8), img[0] > 150  # the bright boxes
            n += bool((cv2.dilate(pasted, np.ones((3, 3), np.uint8)).astype(bool) & red_obj).any())
        return n

    plain = AUGMENT["merge"]
    touched, apart = touching(dataclasses.replace(plain, touch=1.0)), touching(plain)
    assert touched >= 18 and touched >= apart + 8
    assert AUGMENT["merge_hide_touch"].touch > 0 and AUGMENT["merge_hide"].touch == 0


def test_an_object_passes_behind_a_strip_of_another_scene():
    """Augment.behind: the object is whole on the first and last frames, wholly hidden on the middle ones by a strip
    showing the cover image (labelled background); objects too wide for a strip are left alone; off, clips are
    unchanged."""
    from vos.data.augment import AUGMENT
    from vos.data.clips import BEHIND_MAX_WIDTH, _pass_behind, make_sample

    h, w = 64, 96
    imgs = [np.full((h, w, 3), 200, np.uint8) for _ in range(5)]
    cover = np.full((h, w, 3), 7, np.uint8)
    masks = []
    for t in range(5):  # a 12 x 16 object moving right by 3 px a frame
        m = np.zeros((h, w), np.uint8)
        m[24:40, 30 + 3 * t:42 + 3 * t] = 1
        masks.append(m)
    for seed in range(20):
        out, got = _pass_behind(imgs, masks, 1, cover, np.random.default_rng(seed))
        assert [int((g == 1).sum()) for g in got] == [192, 0, 0, 0, 192]  # whole at both ends, gone in between
        for t in (1, 2, 3):
            assert (out[t][masks[t] == 1] == 7).all() and (got[t][out[t][..., 0] == 7] == 0).all()
        assert (out[0][masks[0] == 1] == 200).all() and (out[4][masks[4] == 1] == 200).all()
    wide = [np.pad(np.ones((16, int(BEHIND_MAX_WIDTH * w) + 8), np.uint8), ((24, 24), (0, 0)))[:, :w]] * 5
    out, got = _pass_behind(imgs, wide, 1, cover, np.random.default_rng(0))
    assert all((g == m).all() for g, m in zip(got, wide)) and all((o == 200).all() for o in out)

    assert AUGMENT["dense_band_behind"].behind > 0 and AUGMENT["dense_band"].behind == 0
    unit, other = _one_colour_unit(0, (30, 50, 30, 50)), _one_colour_unit(2, (30, 70, 40, 90))
    hidden = 0
    for seed in range(20):
        plain = make_sample(unit, "static", (64, 64), 1, 12, seed=seed, aug=AUGMENT["static"], clip_len=4)
        again = make_sample(unit, "static", (64, 64), 1, 12, seed=seed, background=other, aug=AUGMENT["static"],
                            clip_len=4)
        assert torch.equal(plain["images"], again["images"])
        s = make_sample(unit, "static", (64, 64), 1, 12, seed=seed, background=other,
                        aug=dataclasses.replace(AUGMENT["static"], behind=1.0), clip_len=4)
        m = s["masks"][:, 0] > 0
        hidden += bool(m[0].sum() > 20 and m[3].sum() > 20 and not m[1:3].any())
    assert hidden >= 10


def test_smooth_pseudo_clips_move_along_one_path():
    """Smooth rows (static_smooth, merge_leave_smooth): an object's place moves steadily from frame 0's to the last
    frame's; without them every frame jumps on its own."""
    from vos.data.augment import AUGMENT
    from vos.data.clips import make_sample

    unit = _one_colour_unit(0, (30, 60, 40, 80))
    off_path = {}
    for row in ("static", "static_smooth"):
        errs = []
        for seed in range(10):
            s = make_sample(unit, "static", (96, 96), 1, 12, seed=seed, aug=AUGMENT[row], clip_len=6)
            m = s["masks"][:, 0].numpy() > 0
            if not all(f.sum() > 20 for f in m):
                continue
            c = np.array([np.argwhere(f).mean(0) for f in m])
            line = c[0] + (c[-1] - c[0]) * np.linspace(0, 1, 6)[:, None]
            errs.append(np.abs(c - line).max())
        off_path[row] = np.median(errs)
    assert off_path["static_smooth"] < 3 < off_path["static"], off_path  # measured: 0.2 and 11.8 px


def test_a_band_of_scene_stands_in_front_of_an_object_on_every_frame():
    """Augment.band: a thin band of the frame's own pixels crosses an object on every frame, drifting steadily,
    labelled background where a mask is known (frames without one stay unknown); off, the clips are unchanged."""
    from vos.data.augment import AUGMENT
    from vos.data.clips import _band, make_sample

    rng = np.random.default_rng(0)
    sq = np.zeros((64, 80), np.uint8)
    sq[16:48, 20:60] = 1
    imgs = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(5)]
    for seed in range(10):
        out, masks = _band(imgs, [sq, None, sq, None, sq], sq == 1, np.random.default_rng(seed))
        assert masks[1] is None and masks[3] is None
        covered = [np.abs(o.astype(int) - i.astype(int)).sum(-1) > 0 for o, i in zip(out, imgs)]
        taken = (sq == 1) & (masks[0] == 0)
        assert taken.sum() > 0 and covered[0][taken].mean() > 0.95  # what is taken away is covered
        assert all(0.02 < c.mean() < 0.3 for c in covered)  # a thin band, on every frame
        for t in (0, 2, 4):
            assert ((masks[t] == 1) <= (sq == 1)).all()  # only taken away, never added
        xs = [np.nonzero(c)[1].mean() for c in covered]
        steps = np.diff(xs)
        assert (steps >= -1).all() or (steps <= 1).all()  # drifts one way (steadily), if at all

    assert AUGMENT["sparse_band"].band > 0 and AUGMENT["sparse"].band == 0
    unit = _one_colour_unit(0, (20, 80, 20, 100))
    for seed in range(8):
        plain = make_sample(unit, "static", (64, 64), 1, 12, seed=seed, aug=AUGMENT["static"])
        banded = make_sample(unit, "static", (64, 64), 1, 12, seed=seed,
                             aug=dataclasses.replace(AUGMENT["static"], band=1.0))
        assert (banded["masks"] <= plain["masks"]).all() and banded["masks"][0].sum() < plain["masks"][0].sum()
        again = make_sample(unit, "static", (64, 64), 1, 12, seed=seed, aug=AUGMENT["static"])
        assert torch.equal(plain["images"], again["images"])


def test_clips_of_the_inference_frames_shape_keep_the_scale_and_train(tmp_path):
    """data.size of a video frame's shape (288 x 512 for 480 x 854 video) cuts views at the same scale as square
    clips, only wider: at the largest view the whole frame, as inference sees it."""
    from vos.data.augment import crop_box

    mask = np.zeros((480, 854), bool)
    mask[200:260, 400:450] = True
    for seed in range(5):
        sq = crop_box(mask, (288, 288), np.random.default_rng(seed))
        wide = crop_box(mask, (288, 512), np.random.default_rng(seed))
        assert abs(sq[2] - wide[2]) <= 1 and abs(wide[3] / wide[2] - 512 / 288) < 0.01  # same height, wider
        assert mask[wide[0]:wide[0] + wide[2], wide[1]:wide[1] + wide[3]].sum() == mask.sum()
    assert crop_box(mask, (288, 512), np.random.default_rng(0), scale_range=(1.0, 1.0)) == (0, 0, 480, 853)
    cfg = cfg_for(tmp_path, "data.size=[48,80]", "model.short_term.radius=2")
    batch = _batch(cfg)
    assert batch["images"].shape[-2:] == (48, 80) and batch["masks"].shape[-2:] == (48, 80)
    model = HODOR(cfg.model)
    loss, _, _ = CycleModel(model, detach_masks=False, long_cycles=False)(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_data_zoom_sets_how_much_of_the_frame_a_clip_shows(tmp_path, monkeypatch):
    """data.zoom reaches the crop of every source's clips (zoom 1: the whole frame); a range below 1 or upside down
    is an error naming the key."""
    import vos.data.clips as clips

    cfg = cfg_for(tmp_path, "data.zoom=[1.0,1.0]")
    seen = []
    real = clips.crop_box
    monkeypatch.setattr(clips, "crop_box", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    ds = ClipDataset(cfg.data.sources, cfg.data.size, 1, clip_len=cfg.data.clip_len, zoom=tuple(cfg.data.zoom))
    ds[(0, 0, 3)]
    assert seen and all(z == (1.0, 1.0) for z in seen)
    for bad in ((0.5, 1.0), (1.6, 1.2)):
        with pytest.raises(VosError, match="data.zoom"):
            ClipDataset(cfg.data.sources, cfg.data.size, 1, zoom=bad)


def test_corrupt_masks_spills_or_cuts_each_object_and_keeps_a_distribution():
    from vos.train.cycles import corrupt_masks

    h = w = 32
    obj = torch.zeros(8, 2, h, w)  # two objects near the centre, so that every shifted copy stays in the frame
    obj[:, 0, 10:16, 10:22] = 0.9
    obj[:, 1, 16:22, 10:22] = 0.8
    probs = torch.cat([1 - obj.sum(1, keepdim=True), obj], 1).requires_grad_(True)
    assert torch.equal(corrupt_masks(probs, 0.0), probs)
    g = torch.Generator().manual_seed(0)
    out = corrupt_masks(probs, 1.0, generator=g)
    assert out.shape == probs.shape
    assert (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(8, h, w), atol=1e-5)
    inside = obj > 0
    gained = ((out[:, 1:] - probs[:, 1:]) * ~inside).flatten(2).sum(-1)  # mass outside the object: spilt
    lost = ((probs[:, 1:] - out[:, 1:]) * inside).flatten(2).sum(-1)  # mass inside it gone: cut
    assert ((gained > 0.5) | (lost > 0.5)).all(), (gained, lost)  # every object of every clip corrupted
    assert (gained > 0.5).any() and (lost > 0.5).any()  # both kinds drawn
    out[:, 1:].sum().backward()
    assert probs.grad is not None and probs.grad[:, 1:].abs().sum() > 0  # the cycle's gradient still flows


def test_memory_swap_moves_part_of_one_object_to_another_and_keeps_a_distribution():
    """swap=1 alone: every object takes part of the other (mass inside the other's region moves over, the other
    loses it); nothing changes outside the objects; swap=0 alone changes nothing; the gradient flows."""
    from vos.train.cycles import corrupt_masks

    h = w = 32
    obj = torch.zeros(8, 2, h, w)
    obj[:, 0, 4:12, 4:28] = 0.9
    obj[:, 1, 20:28, 4:28] = 0.8
    probs = torch.cat([1 - obj.sum(1, keepdim=True), obj], 1).requires_grad_(True)
    assert torch.equal(corrupt_masks(probs, 0.0, swap=0.0), probs)
    out = corrupt_masks(probs, 0.0, swap=1.0, generator=torch.Generator().manual_seed(0))
    assert (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(8, h, w), atol=1e-5)
    region = obj > 0
    for i, j in ((0, 1), (1, 0)):
        took = (out[:, 1 + i] * region[:, j]).flatten(1).sum(-1)
        lost = ((probs[:, 1 + j] - out[:, 1 + j]) * region[:, j]).flatten(1).sum(-1)
        assert (took > 5).all() and (lost > 5).all(), (i, took, lost)
    outside = ~region.any(1, keepdim=True)
    assert torch.equal(out.detach() * outside, probs.detach() * outside)
    out[:, 1].sum().backward()
    assert probs.grad[:, 2].abs().sum() > 0  # object 0's memory depends on object 1's mask


def test_memory_noise_corrupts_what_predicted_frames_leave_to_memory_not_their_logits(tmp_path):
    """The given frame's descriptors and every node's own logits are untouched; a predicted frame's descriptors
    (re-encoded from its corrupted masks) and hence the nodes decoded from it change; memory swaps alone as well."""
    from vos.train.cycles import GT, CycleGraph, split_features

    cfg = cfg_for(tmp_path, "model.short_term.radius=2")
    torch.manual_seed(0)
    model = HODOR(cfg.model).eval()
    batch = _batch(cfg)
    split = split_features(model, batch["images"])
    n1 = ((GT,), 1)
    n2 = ((GT, n1), 2)
    graphs = [CycleGraph(model, split, batch["masks"], batch["valid"], False, [n2], noise, memory_swap=swap)
              for noise, swap in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))]
    clean, noisy, swapped = graphs
    assert batch["valid"].all() and batch["valid"].shape[1] == 2  # two objects: each can take part of the other
    assert torch.equal(clean.logits(n1), swapped.logits(n1))
    assert not torch.allclose(clean.desc(n1), swapped.desc(n1))
    assert torch.equal(clean.desc(GT), noisy.desc(GT))
    assert torch.equal(clean.logits(n1), noisy.logits(n1))
    assert not torch.allclose(clean.desc(n1), noisy.desc(n1))
    assert not torch.allclose(clean.output(n1).last.masks, noisy.output(n1).last.masks)
    assert not torch.allclose(clean.logits(n2), noisy.logits(n2))


def test_mask_keys_start_as_the_one_key_checkpoint_and_train_at_the_fresh_lr(tmp_path):
    """decoder.mask_keys from a one-key checkpoint: its keys are near copies of the checkpoint's key, and their
    readout trains in the group of the fresh modules (optim.short_term_lr), the rest at the model's lr."""
    from vos.train.loop import Trainer

    one = load_checkpoint(train(cfg_for(tmp_path / "a", "optim.steps=1")))["model"]
    t = Trainer(cfg_for(tmp_path / "b", "optim.steps=1", f"init_from={tmp_path / 'a/checkpoint.pt'}",
                        "model.decoder.mask_keys=2", "optim.short_term_lr=0.005"))
    w = t.model.desc_proj[-1].weight.detach().unflatten(0, (2, -1))
    ref = one["desc_proj.2.weight"].float()
    assert not torch.equal(w[0], w[1]) and all(torch.allclose(k, ref, atol=0.5 * float(ref.std())) for k in w)
    fresh = next(g for g in t.opt.param_groups if g["initial_lr"] == 0.005)
    assert any(p is t.model.desc_proj[-1].weight for p in fresh["params"])
    assert not any(p is t.model.desc_proj[0].weight for p in fresh["params"])


def test_refine_starts_fresh_from_a_checkpoint_without_it_and_trains_at_the_fresh_lr(tmp_path):
    """decoder.refine from a checkpoint without it: every other weight is the checkpoint's, the refinement starts as
    a no-op (its last conv zero) and trains in the fresh modules' group, where a training step moves it."""
    from vos.train.loop import Trainer

    plain = load_checkpoint(train(cfg_for(tmp_path / "a", "optim.steps=1")))["model"]
    t = Trainer(cfg_for(tmp_path / "b", "optim.steps=1", f"init_from={tmp_path / 'a/checkpoint.pt'}",
                        "model.decoder.refine=true", "optim.short_term_lr=0.005"))
    sd = t.model.state_dict()
    assert all(torch.equal(sd[k].float(), v.float()) for k, v in plain.items())
    assert not t.model.refine.net[-1].weight.any()
    fresh = next(g for g in t.opt.param_groups if g["initial_lr"] == 0.005)
    assert {id(p) for p in t.model.refine.parameters()} == {id(p) for p in fresh["params"]}
    refined = load_checkpoint(train(cfg_for(tmp_path / "c", "optim.steps=2", f"init_from={tmp_path / 'a/checkpoint.pt'}",
                                            "model.decoder.refine=true", "optim.short_term_lr=0.005")))["model"]
    assert refined["refine.net.2.weight"].abs().sum() > 0


def test_bootstrapped_ce_averages_each_image_s_hardest_known_pixels():
    import torch.nn.functional as F

    from vos.train.cycles import hard_share, mask_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g) * 3
    target = torch.zeros(2, 2, 8, 8)
    target[:, 0, :3], target[:, 1, 5:] = 1, 1
    valid = torch.ones(2, 2, dtype=torch.bool)
    void = torch.zeros(2, 8, 8, dtype=torch.bool)
    void[1, :, :4] = True  # image 1 knows 32 pixels of 64
    torch.testing.assert_close(mask_loss(logits, target, valid, void, hard=1.0), mask_loss(logits, target, valid, void))
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :3], labels[:, 5:] = 1, 2
    ce = F.cross_entropy(logits, labels, reduction="none")
    top0 = ce[0].flatten().topk(16).values  # a quarter of image 0's 64 known pixels
    top1 = ce[1][~void[1]].topk(8).values  # a quarter of image 1's 32: void pixels are never picked
    dice = mask_loss(logits, target, valid, void) - F.cross_entropy(logits, labels.masked_fill(void, -100))
    expected = torch.cat([top0, top1]).mean() + dice
    torch.testing.assert_close(mask_loss(logits, target, valid, void, hard=0.25), expected)
    assert mask_loss(logits, target, valid, void, hard=0.25) > mask_loss(logits, target, valid, void)
    assert [hard_share(i, 0.2, 100) for i in (0, 50, 100, 400)] == pytest.approx([1.0, 0.6, 0.2, 0.2])


def test_appearance_loss_supervises_the_logits_of_the_descriptors_alone(tmp_path):
    from vos.train.cycles import CycleGraph, split_features

    cfg = cfg_for(tmp_path, "model.short_term.radius=2")
    torch.manual_seed(0)
    model = HODOR(cfg.model).eval()
    with torch.no_grad():  # the path's last layer starts at zero: make its offsets move the logits
        for p in model.short_term.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    batch = _batch(cfg)
    with torch.no_grad():
        feats = split_features(model, batch["images"])
        g = CycleGraph(model, feats, batch["masks"], batch["valid"], detach_masks=False)
        n1 = ((GT_NODE,), 1)
        out = g.output(n1)
        K = batch["valid"].shape[1]
        memory_valid = torch.ones(2, 1, model.num_bg + K, dtype=torch.bool)
        alone = model.predict(feats[1], g.desc(GT_NODE)[:, None], memory_valid, K)[0]  # no `last`: no path
    torch.testing.assert_close(out.appearance, alone)
    assert (out.logits - out.appearance).abs().max() > 1e-2
    losses = []
    for weight in (0.0, 0.5):
        torch.manual_seed(1)
        with torch.no_grad():
            losses.append(CycleModel(model, False, True, appearance_loss=weight)(batch, 0)[0])
    assert losses[1] > losses[0] + 0.1  # a second mask loss (>= ~0.5 x CE of an untrained decode) is added


def test_separation_loss_penalises_alike_features_of_different_objects_only():
    from vos.train.cycles import separation_loss

    f = torch.zeros(1, 4, 2, 4)
    f[0, 0, :, :2] = 1.0  # left half: direction 0
    f[0, 1, :, 2:] = 1.0  # right half: direction 1 (orthogonal)
    m = torch.zeros(1, 3, 2, 4)
    m[0, 0, :, 0] = 1  # object 1: left
    m[0, 1, :, 1] = 1  # object 2: left too, same features
    m[0, 2, :, 3] = 1  # object 3: right
    valid = torch.tensor([[True, True, True]])
    # pairs (1,2), (2,1): cosine 1 -> 0.5 each; the four pairs with object 3: cosine 0 -> 0
    torch.testing.assert_close(separation_loss(f, m, valid), torch.tensor(1.0 / 6))
    torch.testing.assert_close(separation_loss(f, m, torch.tensor([[True, False, True]])), torch.tensor(0.0))
    torch.testing.assert_close(separation_loss(f, m, torch.tensor([[True, True, False]])), torch.tensor(0.5))
    tiny = m.clone()
    tiny[0, 1] *= 0.1  # object 2 covers less than one cell: left out
    torch.testing.assert_close(separation_loss(f, tiny, valid), torch.tensor(0.0))


def _added_with_its_weight(cfg, term: str, weight: float = 2.0):
    """CycleModel's loss term `term` (keyword `{term}_loss`, part `term`) at 0 and at `weight` on one batch: absent at
    0, added to the total with its weight. Returns (model, batch, parts at `weight`)."""
    torch.manual_seed(0)
    model = HODOR(cfg.model)
    batch = _batch(cfg)
    out = {}
    for w in (0.0, weight):
        torch.manual_seed(1)
        out[w] = CycleModel(model, False, True, **{f"{term}_loss": w})(batch, 0)
    (total0, parts0), (total, parts) = out[0.0][:2], out[weight][:2]
    assert term not in parts0 and parts[term] > 0
    torch.testing.assert_close(total, total0 + weight * parts[term], rtol=1e-4, atol=1e-5)
    return model, batch, parts


def test_separation_loss_is_added_with_its_weight_and_reaches_the_backbone(tmp_path):
    model, _, parts2 = _added_with_its_weight(cfg_for(tmp_path), "separation")
    model.zero_grad()
    parts2["separation"].backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_lateral8_starts_fresh_from_a_checkpoint_without_it_and_trains_at_the_fresh_lr(tmp_path):
    """model.lateral8 from a checkpoint without it: every other weight is the checkpoint's, the skip starts as a
    no-op (zero) and trains in the fresh modules' group, where a training step moves it."""
    from vos.train.loop import Trainer

    plain = load_checkpoint(train(cfg_for(tmp_path / "a", "optim.steps=1")))["model"]
    t = Trainer(cfg_for(tmp_path / "b", "optim.steps=1", f"init_from={tmp_path / 'a/checkpoint.pt'}",
                        "model.lateral8=true", "optim.short_term_lr=0.005"))
    sd = t.model.state_dict()
    assert all(torch.equal(sd[k].float(), v.float()) for k, v in plain.items())
    assert not t.model.fpn.lateral8.weight.any()
    fresh = next(g for g in t.opt.param_groups if g["initial_lr"] == 0.005)
    assert {id(p) for p in t.model.fpn.lateral8.parameters()} <= {id(p) for p in fresh["params"]}
    skipped = load_checkpoint(train(cfg_for(tmp_path / "c", "optim.steps=2", f"init_from={tmp_path / 'a/checkpoint.pt'}",
                                            "model.lateral8=true", "optim.short_term_lr=0.005")))["model"]
    assert skipped["fpn.lateral8.weight"].abs().sum() > 0


def test_read_loss_scores_the_given_read_against_the_truth_over_valid_objects():
    from vos.train.cycles import read_loss

    truth = torch.zeros(1, 2, 4, 4)
    truth[0, 0, :2] = 1
    truth[0, 1, 2:] = 1
    valid = torch.tensor([[True, True]])
    assert read_loss(truth, truth, valid) < 1e-3
    swapped = truth.flip(1)
    assert read_loss(swapped, truth, valid) > 2.0
    half = truth.clone()
    half[0, 1] = swapped[0, 1]  # object 2 read wrong, but it is not valid
    assert read_loss(half, truth, torch.tensor([[True, False]])) < 1e-3
    assert read_loss(half, truth, valid) > read_loss(truth, truth, valid) + 1.0


def test_read_loss_is_added_with_its_weight_and_teaches_the_path_keys_to_read(tmp_path):
    """cycles.read_loss: frame 0's given masks read into the later frames by the path's keys, against their masks;
    a few steps on it alone make the read better."""
    from vos.utils import VosError

    cfg = cfg_for(tmp_path, "model.short_term.radius=2", "model.short_term.given_topk=4",
                  "model.short_term.similarity=l2_given", "data.clip_len=3")
    model, batch, _ = _added_with_its_weight(cfg, "read")
    cyc = CycleModel(model, False, True, read_loss=1.0)
    opt = torch.optim.Adam(model.short_term.key.parameters(), lr=1e-2)
    reads = []
    for _ in range(12):
        read = cyc(batch, 0)[1]["read"]
        opt.zero_grad()
        read.backward()
        opt.step()
        reads.append(read.item())
    assert reads[-1] < 0.8 * reads[0], reads
    with pytest.raises(VosError, match="given_topk"):
        CycleModel(HODOR(cfg_for(tmp_path, "model.short_term.radius=2").model), False, True, read_loss=1.0)


def test_walk_loss_is_low_only_for_features_that_follow_each_pixel():
    from vos.train.cycles import walk_loss

    torch.manual_seed(0)
    n = 4 * 6  # pixels at stride 16 of a (8, 12) stride-8 map
    distinct = torch.eye(n).view(1, n, 4, 6).repeat_interleave(2, 2).repeat_interleave(2, 3)  # one direction per cell
    moved = distinct[:, torch.randperm(n)]  # every cell's features elsewhere in the next frame: a permutation
    assert walk_loss([distinct, moved, distinct], temperature=0.05) < 1e-3
    flat = torch.ones(1, 3, 8, 12)  # every pixel alike: the walk returns home by chance, 1 in n
    torch.testing.assert_close(walk_loss([flat, flat, flat]), torch.tensor(math.log(n)))
    noisy = [distinct + 0.5 * torch.randn_like(distinct) for _ in range(3)]
    assert 0.5 < walk_loss(noisy, temperature=0.05) < math.log(n)


def test_walk_loss_is_added_with_its_weight_and_reaches_the_backbone(tmp_path):
    model, _, parts = _added_with_its_weight(cfg_for(tmp_path), "walk", weight=0.5)
    model.zero_grad()
    parts["walk"].backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
