import math
import zipfile

import cv2
import numpy as np
import pytest

from vos.baselines import BASELINES
from vos.data import list_sequences, write_mask
from vos.data.synthetic import make_clip, write_davis, write_youtubevos
from vos.eval import evaluate_dataset, evaluate_masks, f_measure, jaccard, statistics
from vos.eval.__main__ import main as eval_main
from vos.eval.metrics import disk
from vos.eval.youtubevos import export_youtubevos


# --- the official DAVIS-2017 functions, transcribed as the oracle (davis2017-evaluation, utils/metrics.py) ---
def _official_seg2bmap(seg):
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _official_f(fg, gt, void, bound_th=0.008):
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
    fb = _official_seg2bmap(fg * np.logical_not(void))
    gb = _official_seg2bmap(gt * np.logical_not(void))
    fg_dil = cv2.dilate(fb.astype(np.uint8), disk(int(bound_pix)))
    gt_dil = cv2.dilate(gb.astype(np.uint8), disk(int(bound_pix)))
    gt_match, fg_match = gb * fg_dil, fb * gt_dil
    n_fg, n_gt = np.sum(fb), np.sum(gb)
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if p + r == 0 else 2 * p * r / (p + r)


def _official_stats(v):
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [v[ids[i]:ids[i + 1] + 1] for i in range(4)]
    return np.nanmean(v), np.nanmean(v > 0.5), np.nanmean(bins[0]) - np.nanmean(bins[3])


def test_disk_matches_skimage():
    morph = pytest.importorskip("skimage.morphology")
    for r in (1, 3, 8):
        assert np.array_equal(disk(r), morph.disk(r).astype(np.uint8))


def test_metrics_equal_official_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(20, 90, 2)
        gt = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 3) > 0.5
        pr = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 3) > 0.5
        void = rng.random((h, w)) > 0.95
        assert abs(f_measure(gt, pr, void) - _official_f(gt, pr, void)) < 1e-9
        union = ((gt | pr) & ~void).sum()
        assert abs(jaccard(gt, pr, void) - ((gt & pr & ~void).sum() / union)) < 1e-9
    v = rng.random(37)
    np.testing.assert_allclose(statistics(v), _official_stats(v), atol=1e-12)


def test_hand_made_cases():
    m = np.zeros((100, 100), bool)
    m[20:60, 30:70] = True
    assert jaccard(m, m) == 1 and f_measure(m, m) == 1
    other = np.zeros_like(m)
    other[70:90, 75:95] = True
    assert jaccard(m, other) == 0 and f_measure(m, other) == 0
    empty = np.zeros_like(m)
    assert jaccard(empty, empty) == 1 and f_measure(empty, empty) == 1
    assert f_measure(m, empty) == 0 and jaccard(m, empty) == 0
    tol = math.ceil(0.008 * math.hypot(100, 100))  # 2 px
    shifted_in = np.roll(m, tol, axis=1)
    shifted_out = np.roll(m, tol + 2, axis=1)
    assert f_measure(m, shifted_in) > 0.95 and f_measure(m, shifted_out) < 0.6
    assert jaccard(m, shifted_in) == pytest.approx((40 * 38) / (40 * 42))
    void = np.zeros_like(m)
    void[20:60, 30:50] = True  # the prediction misses the void half only: perfect
    half = m.copy()
    half[:, 30:50] = False
    assert jaccard(m, half, void) == 1 and f_measure(m, half, void) == 1


def test_decay_beyond_255_frames():
    v = np.concatenate([np.ones(150), np.zeros(150)])
    mean, recall, decay = statistics(v)
    assert mean == 0.5 and recall == 0.5 and decay == 1.0  # the official uint8 cast would give a wrong decay
    assert _official_stats(v)[2] != 1.0


def test_sequence_protocol_and_unknown_ids():
    _, masks = make_clip(0, n_frames=10, size=(60, 90), n_objects=2, late_objects=0, leave_and_return=False)
    pred = masks.copy()
    pred[0] = 0  # first and last frames are excluded
    pred[-1] = 0
    pred[5][pred[5] == 2] = 9  # an id not in the ground truth: reported, not a crash
    r = evaluate_masks("s", masks, pred)
    assert r.J.shape == (2, 8) and r.unknown_ids == [9]
    assert r.J[0].min() == 1 and r.J[1, 4] == 0


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d17")
    clips = {f"s{i}": make_clip(i, n_frames=8, size=(64, 96), n_objects=2, late_objects=0) for i in range(2)}
    return write_davis(root, clips, split="val"), clips


def _write_predictions(root, layout, split, out, method):
    for s in list_sequences(root, layout, split):
        b, fr = BASELINES[method](), s.frames()
        (out / s.name).mkdir(parents=True, exist_ok=True)
        for t in range(len(fr)):
            write_mask(out / s.name / f"{fr.names[t]}.png", b.step(fr[t], s.read_mask(0)[0] if t == 0 else None))


def test_dataset_evaluation_cli_and_baselines(synthetic_root, tmp_path, capsys):
    root, clips = synthetic_root
    # perfect predictions score 1
    for name, (_, masks) in clips.items():
        (tmp_path / "gt" / name).mkdir(parents=True)
        for t, m in enumerate(masks):
            write_mask(tmp_path / "gt" / name / f"{t:05d}.png", m)
    table, rows = evaluate_dataset(root, "davis2017", "val", tmp_path / "gt", workers=2)
    assert table["J&F-Mean"] == 1 and len(rows) == 4
    for method in ("copy", "flow"):
        _write_predictions(root, "davis2017", "val", tmp_path / method, method)
        t, _ = evaluate_dataset(root, "davis2017", "val", tmp_path / method, workers=1)
        assert 0 < t["J&F-Mean"] < 1
    assert eval_main(["--dataset-root", str(root), "--layout", "davis2017", "--split", "val",
                      "--results", str(tmp_path / "flow")]) == 0
    assert "J&F-Mean" in capsys.readouterr().out and (tmp_path / "flow" / "global_results.csv").exists()
    (tmp_path / "copy" / "s1" / "00003.png").unlink()
    assert eval_main(["--dataset-root", str(root), "--layout", "davis2017", "--split", "val",
                      "--results", str(tmp_path / "copy")]) == 2
    assert "00003.png" in capsys.readouterr().err


def test_davis2017_void(tmp_path):
    frames, masks = make_clip(1, n_frames=5, size=(48, 64), n_objects=1, late_objects=0, leave_and_return=False)
    gt = masks.copy()
    gt[:, :, :8] = 255  # void band
    root = write_davis(tmp_path / "d", {"v": (frames, gt)}, split="val")
    pred = masks.copy()
    pred[:, :, :8] = 1  # wrong, but only on void pixels
    for t, m in enumerate(pred):
        (tmp_path / "r" / "v").mkdir(parents=True, exist_ok=True)
        write_mask(tmp_path / "r" / "v" / f"{t:05d}.png", m)
    table, _ = evaluate_dataset(root, "davis2017", "val", tmp_path / "r", workers=1)
    assert table["J-Mean"] == 1


def test_youtubevos_export(tmp_path):
    clip = make_clip(2, n_frames=10, size=(48, 64))
    root = write_youtubevos(tmp_path / "yt", {"v": clip}, stride=3)
    (s,) = list_sequences(root, "youtubevos", "valid")
    (tmp_path / "r" / "v").mkdir(parents=True)
    for t in range(10):
        write_mask(tmp_path / "r" / "v" / f"{t:05d}.png", clip[1][t])
    z = export_youtubevos(tmp_path / "r", {"v": s.eval_frames}, tmp_path / "sub.zip")
    names = zipfile.ZipFile(z).namelist()
    assert names == [f"Annotations/v/{t:05d}.png" for t in (0, 3, 6, 9)]


def test_real_davis2016_copy_baseline(shared_data, tmp_path):
    """The official code gives copy J&F 23.7 (J 27.2, F 20.2) on the dev split."""
    root = shared_data / "davis2016"
    for s in list_sequences(root, "davis2016", "dev"):
        first = s.read_mask(0)[0]
        (tmp_path / s.name).mkdir()
        for name in s.frame_names:
            write_mask(tmp_path / s.name / f"{name}.png", first)
    table, rows = evaluate_dataset(root, "davis2016", "dev", tmp_path, workers=2)
    assert len(rows) == 5
    assert round(100 * table["J&F-Mean"], 1) == 23.7
    assert round(100 * table["J-Mean"], 1) == 27.2 and round(100 * table["F-Mean"], 1) == 20.2
