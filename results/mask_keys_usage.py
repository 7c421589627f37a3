"""Do an object's mask keys (model.decoder.mask_keys) come apart? For a DAVIS-2016 sequence: the object's keys from
frame 0's given mask (cosine between them, their norms), then, decoding frame F from frame 0's descriptors alone,
the share of the object's ground-truth pixels where each key is the largest and the mean gap between the largest
and smallest key logit there; with OUT.png, frame F1 with the object's pixels coloured by their winning key (keys 0-3:
red, green, blue, yellow). Used for RESULTS.md ("Several mask keys per descriptor") and docs/mask_keys.png.

    python results/mask_keys_usage.py CHECKPOINT SEQUENCE F1,F2,... [OUT.png]   (data: $VOS_DATA, else ../shared/data)
"""
import os
import sys

import numpy as np
import torch
from PIL import Image

from vos.checkpoint import load_models

ck, seq, frames = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")]
root = os.path.join(os.environ.get("VOS_DATA", "../shared/data"), "davis2016")
model = load_models(ck, torch.device("cpu"))[0]
K = model.cfg.decoder.mask_keys


def load(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t and its mask at 288 x 512 (the inference scale)."""
    im = Image.open(f"{root}/JPEGImages/480p/{seq}/{t:05d}.jpg").convert("RGB").resize((512, 288), Image.BILINEAR)
    gt = Image.open(f"{root}/Annotations/480p/{seq}/{t:05d}.png").convert("L").resize((512, 288), Image.NEAREST)
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255
    return x, torch.from_numpy(np.array(gt) > 127)[None, None].float()


with torch.no_grad():
    x0, g0 = load(0)
    f0 = model.features(x0)
    d = model.encode(f0, model.masks_to_s4(g0, f0))
    k = model.desc_proj(d).unflatten(-1, (K, -1))[0, -1]  # the object's K keys (K, Cm)
    kn = torch.nn.functional.normalize(k, dim=-1)
    print(f"{ck} {seq}: cosine between the object's keys\n{(kn @ kn.T).numpy().round(4)}\nnorms {k.norm(dim=-1).numpy().round(2)}")
    for t in frames:
        x, g = load(t)
        f = model.features(x)
        _, e, _ = model._decode(f, d[:, None], torch.ones(1, 1, d.shape[1], dtype=torch.bool))
        logits = torch.einsum("kc,chw->khw", k, e[0])
        obj = torch.nn.functional.interpolate(g, size=e.shape[-2:], mode="area")[0, 0] > 0.5
        won = logits.argmax(0)[obj]
        gap = (logits.amax(0) - logits.amin(0))[obj].mean()
        if t == frames[0] and len(sys.argv) > 4:
            win = torch.nn.functional.interpolate(logits[None], size=g.shape[-2:], mode="bilinear")[0].argmax(0)
            colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]] * K)[:K].float()
            img, inside = x[0].permute(1, 2, 0) * 255, g[0, 0] > 0
            img[inside] = 0.4 * img[inside] + 0.6 * colours[win[inside]]
            Image.fromarray(img.round().byte().numpy()).save(sys.argv[4])
        print(f"frame {t}: share of the object's pixels won per key {[round(float((won == i).float().mean()), 2) for i in range(K)]}, "
              f"mean gap largest - smallest key logit {float(gap):.2f}")
