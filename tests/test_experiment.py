"""The experiment runner (python -m vos.experiment): one config -> segment, evaluate, record the row."""

import csv

import numpy as np
import pytest
from PIL import Image

import vos.experiment as experiment
from vos.data import read_mask, write_mask
from vos.data.synthetic import make_clip, write_davis


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("RESULTS", "RUNS", "OUTPUTS"):  # all three are anchored at the repository; here at tmp_path
        assert getattr(experiment, name).parent == experiment.ROOT
        monkeypatch.setattr(experiment, name, tmp_path / name.lower())
    return tmp_path / "results"


def _rows(results):
    return {r["experiment"]: r for r in csv.DictReader((results / "experiments.csv").open())}


def test_davis_experiment_records_its_row(tmp_path, results):
    clip = make_clip(3, n_frames=6, size=(64, 96), n_objects=1, late_objects=0, leave_and_return=False)
    root = write_davis(tmp_path / "d", {"a": clip}, split="val")
    cfg = tmp_path / "copy_a.yaml"
    cfg.write_text(f"method: copy\ndata_root: {tmp_path}\ndataset: {root}\nlayout: davis2017\nsplit: val\n")
    row = experiment.run(str(cfg))
    # copy: frame 0 is exact, later frames keep the first mask while the object moves
    pred = read_mask(tmp_path / "outputs/experiments/copy_a/a/00005.png")[0]
    assert np.array_equal(pred, clip[1][0])
    # copy's J is the IoU of the first mask with each frame's, over frames 1..T-2 (the DAVIS protocol)
    m = clip[1]
    iou = [((m[0] == 1) & (m[t] == 1)).sum() / ((m[0] == 1) | (m[t] == 1)).sum() for t in range(1, len(m) - 1)]
    assert row["J"] == pytest.approx(100 * np.mean(iou), abs=1e-6) and row["J"] < 95
    assert _rows(results)["copy_a"]["J&F"] == f"{row['J&F']:.1f}"
    assert "per video J&F: a_1 " in (results / "experiments" / "copy_a.txt").read_text()


def test_sparse_folder_experiment_reports_each_object_s_area(tmp_path, results):
    frames, masks = make_clip(5, n_frames=6, size=(64, 96), n_objects=2, late_objects=0, leave_and_return=False)
    img_dir, mask_dir = tmp_path / "ex/images/clip", tmp_path / "ex/masks/clip"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(img_dir / f"{t:05d}.jpg")
    write_mask(mask_dir / "00000.png", np.where(masks[0] == 1, 1, 0).astype(np.uint8))  # object 1 at frame 0
    write_mask(mask_dir / "00002.png", np.where(masks[2] == 2, 2, 0).astype(np.uint8))  # object 2 joins at 2
    cfg = tmp_path / "areas.yaml"
    cfg.write_text(f"method: copy\ndataset: {tmp_path / 'ex'}\nlayout: sparse_folder\nsplit: clip\n")
    row = experiment.run(str(cfg))
    a1, a2 = int((masks[0] == 1).sum()), int((masks[2] == 2).sum())
    # the copy baseline keeps each given mask: object 1 keeps its area, object 2 its own from frame 3 on
    assert row["clip: object 1 area at last frame / given"] == pytest.approx(1.0, abs=0.02)
    assert row["clip: min object px after given"] == pytest.approx(min(a1, a2), rel=0.05)
    text = (results / "experiments" / "areas.txt").read_text()
    assert f"object 2 (given at frame 2, {a2} px)" in text


def test_a_stopped_training_is_not_evaluated_and_resumes(tmp_path, results, monkeypatch):
    import yaml

    import vos.train.loop as loop
    from vos.utils import VosError

    root = write_davis(tmp_path / "d", {"a": make_clip(3, n_frames=4, size=(64, 96), n_objects=1, late_objects=0,
                                                       leave_and_return=False)}, split="val")
    tiny = ["model.channels=32", "model.mask_channels=8", "model.heads=4", "model.encoder.layers=1",
            "model.decoder.layers=1", "model.backbone_weights=null", "data.size=[64,64]",
            "data.sources=[{kind: synthetic, regime: static, length: 4}]", "log.wandb=disabled", "optim.warmup=1",
            "optim.steps=3"]
    smoke = experiment.ROOT / "configs/train/smoke.yaml"
    cfg = tmp_path / "tiny_run.yaml"
    cfg.write_text(yaml.safe_dump({"train": str(smoke), "train_overrides": tiny, "dataset": str(root),
                                   "layout": "davis2017", "split": "val"}))
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda c, resume=None: real_train(c, resume, stop_after=1))  # a SIGTERM
    with pytest.raises(VosError, match="stopped at step 1 of 3"):
        experiment.run(str(cfg))
    assert not (results / "experiments.csv").exists()  # nothing recorded for a half-trained model
    monkeypatch.setattr(loop, "train", real_train)
    row = experiment.run(str(cfg))  # resumes to step 3, then evaluates
    from vos.eval import evaluate_dataset

    table, _ = evaluate_dataset(root, "davis2017", "val", tmp_path / "outputs/experiments/tiny_run")
    assert row["J&F"] == pytest.approx(100 * table["J&F-Mean"]) and "tiny_run" in _rows(results)
    assert (tmp_path / "runs/tiny_run/checkpoint.pt").is_file()


def test_average_and_ensemble_experiments_export_their_runs(tmp_path, results):
    import torch

    from vos.checkpoint import load_checkpoint, load_models, save_checkpoint
    from vos.config import ModelConfig, load_config, to_dict
    from vos.model import HODOR

    cfg = load_config(ModelConfig, None, ["channels=32", "mask_channels=8", "heads=4", "encoder.layers=1",
                                          "decoder.layers=1", "backbone_weights=null"])
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / f"m{seed}.pt", {"model": HODOR(cfg).state_dict(),
                                                   "config": {"model": to_dict(cfg), "seed": seed}})
        (tmp_path / f"m{seed}.yaml").write_text(f"checkpoint: {tmp_path / f'm{seed}.pt'}\n")
        runs.append(str(tmp_path / f"m{seed}.yaml"))
    (tmp_path / "soup.yaml").write_text(f"average: [{runs[0]}, {runs[1]}]\n")
    (tmp_path / "pair.yaml").write_text(f"ensemble: [{runs[0]}, {runs[1]}]\n")
    soup = experiment.checkpoint_of(str(tmp_path / "soup.yaml"))
    pair = experiment.checkpoint_of(str(tmp_path / "pair.yaml"))
    assert soup.name == "average.pt" and len(load_models(soup, torch.device("cpu"))) == 1
    assert pair.name == "ensemble.pt" and len(load_models(pair, torch.device("cpu"))) == 2
    members = load_checkpoint(pair)["members"]
    assert [m["source"] for m in members] == [str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt")]
    assert [m["config"]["seed"] for m in members] == [0, 1]  # each member keeps its own config


def test_experiment_configs_are_checked(tmp_path, results):
    from vos.utils import VosError

    for text, match in (("train: configs/train/smoke.yaml\ncheckpoint: x.pt\n", "one source of weights"),
                        ("split: dev\n", "needs weights"),
                        ("method: copy\ncheckpoint: x.pt\n", "baseline and takes no weights"),
                        ("method: copy\nprompt: boxes\n", "expected one of \\[mask, box\\]")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(VosError, match=match):
            experiment.run(str(tmp_path / "bad.yaml"))
    (tmp_path / "a.yaml").write_text("method: copy\nafter: [" + str(tmp_path / "b.yaml") + "]\n")
    (tmp_path / "b.yaml").write_text("method: copy\nafter: [" + str(tmp_path / "a.yaml") + "]\n")
    with pytest.raises(VosError, match="cycle: a -> b -> a"):
        experiment.checkpoint_of(str(tmp_path / "a.yaml"))


def _record_rows(names: list[str]) -> None:
    for n in names:
        experiment._record({"experiment": n, "J&F": 50.0})


def test_runners_finishing_together_keep_each_others_rows(results):
    """Experiments run side by side; each replaces its own line of experiments.csv. Four processes writing 25 rows
    each at once leave all 100 (without the lock, one runner's read-modify-write dropped another's row)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_rows, args=([f"p{i}_{j}" for j in range(25)],)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert set(_rows(results)) == {f"p{i}_{j}" for i in range(4) for j in range(25)}
