"""Test-time adaptation (vos.adapt): fine-tuned copies through the training loop's own step, handed to the Tracker."""

import numpy as np
import pytest
import torch

from vos.adapt import adapt_models, finetune
from vos.config import AdaptConfig, ModelConfig, load_config, to_dict
from vos.checkpoint import export, load_models, save_checkpoint
from vos.data import FrameFolder, write_mask
from vos.data.synthetic import make_clip, write_frames
from vos.inference import Tracker, VideoSession
from vos.model import HODOR

TINY = ["channels=32", "mask_channels=8", "heads=4", "encoder.layers=1", "decoder.layers=1", "backbone_weights=null"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt")
    frames, masks = make_clip(5, n_frames=10, size=(64, 96), n_objects=2, late_objects=0)
    write_frames(d / "frames", frames)
    write_mask(d / "first.png", masks[0])
    for seed in (0, 1):
        cfg = load_config(ModelConfig, None, TINY)
        torch.manual_seed(seed)
        save_checkpoint(d / f"m{seed}.pt", {"model": HODOR(cfg).state_dict(), "config": {"model": to_dict(cfg)}})
    return d, masks


def _session(d, prompts: dict[int, np.ndarray]) -> VideoSession:
    s = VideoSession(None, FrameFolder(d / "frames"))
    for t, ids in prompts.items():
        s.add_mask(t, ids)
    return s


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_the_loaded_model_is_untouched_and_a_seed_fixes_the_result(video):
    d, masks = video
    (model,) = load_models(d / "m0.pt", torch.device("cpu"))
    before = _weights(model)
    s = _session(d, {0: masks[0]})
    cfg = AdaptConfig(steps=2, batch_size=2, size=64, seed=3)
    a, b = (finetune(model, s.frames, s.prompts, cfg) for _ in range(2))
    c = finetune(model, s.frames, s.prompts, AdaptConfig(steps=2, batch_size=2, size=64, seed=4))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the loaded model is untouched
    wa, wb, wc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    assert any(not torch.equal(wa[k], v) for k, v in before.items() if v.is_floating_point())  # it did train
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    groups = {g: {n for n, p in model.named_parameters() if id(p) in {id(q) for q in ps}}
              for g, ps in model.param_groups().items()}
    assert all(groups.values()) and sum(map(len, groups.values())) == len(list(model.parameters()))
    for train, fixed in (("heads", ("early", "features")), ("late", ("early",))):
        w = finetune(model, s.frames, s.prompts, AdaptConfig(steps=1, size=64, train=train)).state_dict()
        for g, names in groups.items():
            moved = any(not torch.equal(w[k], before[k]) for k in names)
            assert moved != (g in fixed), (train, g)


def test_mix_puts_the_adapted_weights_that_far_from_the_loaded_ones(video):
    d, masks = video
    (model,) = load_models(d / "m0.pt", torch.device("cpu"))
    s = _session(d, {0: masks[0]})
    tuned = {mix: finetune(model, s.frames, s.prompts, AdaptConfig(steps=2, batch_size=2, size=64, seed=3, mix=mix))
             for mix in (1.0, 0.25, 0.0)}
    loaded = dict(model.named_parameters())
    for name, full in tuned[1.0].named_parameters():
        quarter, none = dict(tuned[0.25].named_parameters())[name], dict(tuned[0.0].named_parameters())[name]
        torch.testing.assert_close(none, loaded[name])  # mix 0: the loaded weights
        torch.testing.assert_close(quarter, loaded[name] + 0.25 * (full - loaded[name]))
    assert any(not torch.equal(p, loaded[n]) for n, p in tuned[0.25].named_parameters())
    assert not any(p.requires_grad for p in tuned[0.25].parameters())


def test_four_frame_merged_clips_run_forward_and_back_like_inference(video, monkeypatch):
    """adapt.clip_len 4 and merge_weight 1: every clip is a four-frame merge of the given frame with copies of its
    own objects (training's merge_leave), and the trainer runs it with the chain of inference (7 decodes)."""
    import vos.adapt
    from vos.train import cycles

    d, masks = video
    (model,) = load_models(d / "m0.pt", torch.device("cpu"))
    s = _session(d, {0: masks[0]})
    seen, paths = [], []
    real_sample, real_paths = vos.adapt.make_sample, cycles.cycle_paths

    def sample(unit, regime, *a, **k):
        out = real_sample(unit, regime, *a, **k)
        seen.append((regime, out["images"].shape[0], k["aug"]))
        return out

    monkeypatch.setattr(vos.adapt, "make_sample", sample)
    monkeypatch.setattr(cycles, "cycle_paths", lambda *a: paths.append(real_paths(*a)) or paths[-1])
    tuned = finetune(model, s.frames, s.prompts, AdaptConfig(steps=2, batch_size=2, size=64, clip_len=4,
                                                             merge_weight=1.0))
    assert [(r, t) for r, t, _ in seen] == [("merge", 4)] * 4 and all(a.leave > 0 for _, _, a in seen)
    assert paths and all(p == cycles.chain_paths(4) and len(p) == 7 for p in paths)
    assert any(not torch.equal(p, q) for p, q in zip(tuned.parameters(), model.parameters()))
    seen.clear()
    finetune(model, s.frames, s.prompts, AdaptConfig(steps=1, batch_size=2, size=64))  # the default: static, 3
    assert [(r, t, a) for r, t, a in seen] == [("static", 3, None)] * 2


def test_objects_given_at_different_frames_leave_each_other_out_of_the_loss(video, tmp_path):
    """Object 1 given at frame 0, object 2 at frame 3: frame 0 teaches object 1, and where object 2 may be at
    frame 0 (the loaded model's prediction, propagated back from frame 3, dilated) is left out of the loss
    instead of being taught as background; likewise at frame 3 for object 1."""
    from vos.adapt import _units, where_others_may_be
    from vos.data.clips import VOID, make_sample

    from vos.data.synthetic import square_clip
    from vos.inference import DEFAULT_CHECKPOINT

    frames, masks = square_clip([(40, 60, 8, 3), (200, 80, -5, 2)], n=6, size=56, colours={2: (40, 80, 220)})
    write_frames(tmp_path / "frames", frames)
    models = load_models(DEFAULT_CHECKPOINT, torch.device("cpu"))[:1]  # a trained model: it predicts the squares
    one, two = (np.where(masks[t] == k, k, 0).astype(np.uint8) for t, k in ((0, 1), (3, 2)))
    s = _session(tmp_path, {0: one, 3: two})
    tracker = Tracker(models)
    elsewhere = where_others_may_be(tracker, s.frames, s.prompts)
    assert set(elsewhere) == {0, 3}
    units = _units(s.frames, s.prompts, elsewhere)
    for unit, t, given in zip(units, (0, 3), (1, 2)):
        ids = unit.load_mask(t)
        other = masks[t] == 3 - given
        assert (ids[other] == VOID).mean() > 0.9 and (ids == 1).sum() == (masks[t] == given).sum()  # given wins
        sample = make_sample(unit, "static", (192, 320), 2, 12, 0)  # the whole frame: both squares
        assert sample["void"][0].any() and not (sample["void"][0] & (sample["masks"][0, 0] > 0)).any()
    complete = _session(tmp_path, {0: masks[0]})
    assert where_others_may_be(tracker, complete.frames, complete.prompts) == {}  # nothing to leave out
    (tuned,) = adapt_models(tracker, s.frames, s.prompts, AdaptConfig(steps=1, batch_size=2, size=64, seed=3))
    assert any(not torch.equal(w, v) for w, v in zip(tuned.parameters(), models[0].parameters()))


def test_the_loss_ignores_void_pixels():
    from vos.train.cycles import mask_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 2, 8, 8)  # background, one object
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4] = 1
    void = torch.zeros(1, 8, 8, dtype=torch.bool)
    void[..., 4:] = True
    valid = torch.ones(1, 1, dtype=torch.bool)
    a = mask_loss(logits, target, valid, void)
    changed = logits.clone()
    changed[..., 4:] = torch.randn(1, 2, 8, 4) * 5  # only void pixels change
    torch.testing.assert_close(mask_loss(changed, target, valid, void), a)
    assert not torch.allclose(mask_loss(changed, target, valid), mask_loss(logits, target, valid))


def _parts(s: VideoSession):
    return s.frames, s.prompts


def test_each_of_several_models_is_adapted_and_the_tracker_runs_the_copies(video, tmp_path):
    from vos.adapt import Adaptation

    d, masks = video
    export([str(d / "m0.pt"), str(d / "m1.pt")], str(tmp_path / "pair.pt"), ensemble=True)
    models = load_models(tmp_path / "pair.pt", torch.device("cpu"))
    s = _session(d, {0: masks[0]})
    s.tracker = Tracker(models)
    seconds = Adaptation(AdaptConfig(steps=1, batch_size=1, size=64))(s)
    assert seconds > 0 and len(s.tracker.adapted) == 2 and s.tracker.active is s.tracker.adapted
    for tuned, loaded in zip(s.tracker.adapted, models):
        assert any(not torch.equal(w, v) for w, v in zip(tuned.parameters(), loaded.parameters()))
    assert len(list(s.propagate())) == 10
    s.tracker.use_adapted(None)
    assert s.tracker.active is s.tracker.models


def test_infer_adapts_through_the_command_line(video, tmp_path):
    from vos.infer import main

    d, _ = video
    assert main(["--input", str(d / "frames"), "--mask", str(d / "first.png"), "--out", str(tmp_path), "--checkpoint",
                 str(d / "m0.pt"), "adapt.steps=2", "adapt.size=64", "short_side=0"]) == 0
    assert len(list((tmp_path / "frames").glob("*.png"))) == 10


def test_a_time_budget_shortens_the_schedule_to_end_in_time(video, monkeypatch):
    """With a deadline, the steps that fit (from the measured time per step) become the schedule's length: the
    learning rate still decays to its end instead of stopping mid-schedule."""
    import time

    import vos.adapt as adapt_mod
    from vos.train.loop import Trainer

    d, masks = video
    (model,) = load_models(d / "m0.pt", torch.device("cpu"))
    s = _session(d, {0: masks[0]})
    clock = iter([0] + list(range(30, 10 ** 6, 10)))  # the first step (with the trainer's build) 30 s, then 10 s
    monkeypatch.setattr(adapt_mod.time, "perf_counter", lambda: float(next(clock)))
    lrs, step = [], Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, b: (lrs.append(self.opt.param_groups[0]["lr"]),
                                                                 step(self, b))[1])
    cfg = AdaptConfig(steps=20, batch_size=1, size=64, lr=1e-3, warmup=0, schedule="cosine")
    with pytest.warns(UserWarning, match="7 of 20 steps"):
        finetune(model, s.frames, s.prompts, cfg, deadline=95.0)  # the clock starts at 0
    # step 1 ends at t=30, then 10 s per step: 7 steps end by t=90 (the first step's cost, counted in every step,
    # would have fit 6), and the cosine is over 7 steps, not 20
    assert len(lrs) == 7 and lrs[0] == pytest.approx(1e-3) and lrs[-1] < 0.1e-3
    monkeypatch.setattr(adapt_mod.time, "perf_counter", time.perf_counter)
    lrs.clear()
    finetune(model, s.frames, s.prompts, cfg)
    assert len(lrs) == 20 and lrs[5] > 0.8e-3  # no deadline: the whole schedule


def test_a_time_cap_a_progress_report_and_a_fallback_on_failure(video, monkeypatch):
    import vos.adapt as adapt_mod
    from vos.adapt import Adaptation

    d, masks = video
    models = load_models(d / "m0.pt", torch.device("cpu"))
    seen = []

    def session():
        s = _session(d, {0: masks[0]})
        s.tracker = Tracker(models)
        return s

    s = session()
    Adaptation(AdaptConfig(steps=3, batch_size=1, size=64), progress=False,
               on_progress=lambda done, total, sec: seen.append((done, total)))(s)
    assert seen == [(1, 3), (2, 3), (3, 3)] and s.tracker.adapted is not None
    seen.clear()
    with pytest.warns(UserWarning, match="1 of 50 steps .adapt.seconds reached"):
        Adaptation(AdaptConfig(steps=50, batch_size=1, size=64, seconds=1e-6), progress=False,
                   on_progress=lambda done, total, sec: seen.append(done))(s)
    assert seen == [1] and s.tracker.adapted is not None

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(adapt_mod, "finetune", broken)
    s = session()
    with pytest.warns(UserWarning, match="adaptation failed .RuntimeError: out of memory.; propagating with the "
                                         "loaded model"):
        Adaptation(AdaptConfig(steps=2, size=64), progress=False)(s)
    assert s.tracker.adapted is None and len(list(s.propagate())) == 10  # the video is still segmented
