"""Frame 0 of merged photo clips, as the training mix makes them, written as a DAVIS-2017 layout that
results/self_decode.py reads (--root): can a model give back the objects of its own training distribution?

    python results/photo_clips.py [--source coco-mini] [--n 80] [--out data/photo-clips-coco-mini]

The clips are the `merge` source of configs/train/short_term_composites_given_hideband_small.yaml (augment
merge_hide_small: half of them with the pasted objects scaled down to 1-3 % of the frame) at 288x512, seeds
10000 + i (the training runs draw other seeds); clips with fewer than two labelled objects are skipped.
"""
import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from vos.config import TrainConfig, load_config
from vos.data.clips import ClipDataset

p = argparse.ArgumentParser()
p.add_argument("--source", default="coco-mini")
p.add_argument("--n", type=int, default=80)
p.add_argument("--out", default=None)
a = p.parse_args()
out = Path(a.out or f"data/photo-clips-{a.source}")
cfg = load_config(TrainConfig, "configs/train/short_term_composites_given_hideband_small.yaml", ["data.size=[288,512]"])
src = next(s for s in cfg.data.sources if s.root == a.source and s.regime == "merge")
ds = ClipDataset([OmegaConf.merge(src, {"weight": 1.0})], [288, 512], 3, cfg.data.root, clip_len=4,
                 zoom=tuple(cfg.data.zoom))
for i in range(a.n):
    s = ds[(0, i % len(ds.units[0]), 10_000 + i)]
    img = (s["images"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    lab = np.zeros(img.shape[:2], np.uint8)
    for k in np.flatnonzero(s["valid"].numpy()):
        lab[s["masks"][0, k].numpy() > 0.5] = k + 1
    if len(np.unique(lab)) < 3:
        continue
    for sub, name, arr in (("JPEGImages", "00000.jpg", img), ("Annotations", "00000.png", lab)):
        d = out / sub / "480p" / f"clip{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(d / name, **({"quality": 95} if name.endswith("jpg") else {}))
print(f"wrote {len(list((out / 'JPEGImages/480p').iterdir()))} clips to {out}")
