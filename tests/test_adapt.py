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
    heads = finetune(model, s.frames, s.prompts, AdaptConfig(steps=1, size=64, train="heads"))
    features = {id(p) for p in model.param_groups()["features"]}
    names = {n for n, p in model.named_parameters() if id(p) in features}
    wh = heads.state_dict()
    assert names and all(torch.equal(wh[k], before[k]) for k in names)  # backbone and FPN as they were
    assert any(not torch.equal(wh[k], v) for k, v in before.items() if k not in names and v.is_floating_point())


def test_only_frames_that_give_every_object_are_trained_on(video):
    """An object given at another frame would be taught as background where it is not given: such frames are
    left out, and with no frame giving every object nothing is adapted (a warning says so)."""
    d, masks = video
    models = load_models(d / "m0.pt", torch.device("cpu"))
    cfg = AdaptConfig(steps=2, batch_size=2, size=64, seed=3)
    one, two = (np.where(masks[t] == k, k, 0).astype(np.uint8) for t, k in ((0, 1), (3, 2)))
    with pytest.warns(UserWarning, match="adaptation skipped"):
        assert adapt_models(models, *_parts(_session(d, {0: one, 3: two})), cfg) is None
    both = np.where(np.isin(masks[9], (1, 2)), masks[9], 0).astype(np.uint8)
    (w9,) = adapt_models(models, *_parts(_session(d, {0: one, 3: two, 9: both})), cfg)
    (only9,) = adapt_models(models, *_parts(_session(d, {9: both})), cfg)
    assert all(torch.equal(v, only9.state_dict()[k]) for k, v in w9.state_dict().items())  # frames 0, 3 unused


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
