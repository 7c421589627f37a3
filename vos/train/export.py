"""Export a training checkpoint as a shippable model: `python -m vos.train.export SRC.pt [SRC2.pt ...] DST.pt`.

Keeps the weights (fp16 storage: the loader casts back to fp32) and the first source's config, drops the
optimizer, scheduler and RNG states. Several sources of the same architecture are averaged weight by weight
(a "model soup"; it helps when the runs started from the same initialisation).
"""

from __future__ import annotations

import sys

import torch

from vos.utils import VosError
from vos.utils.checkpoint import load_checkpoint, save_checkpoint


def export(srcs: list[str], dst: str) -> None:
    states = [load_checkpoint(s) for s in srcs]
    first = states[0]["model"]
    for src, state in zip(srcs[1:], states[1:]):
        if state["model"].keys() != first.keys() or any(state["model"][k].shape != v.shape for k, v in first.items()):
            raise VosError(f"cannot average {srcs[0]} and {src}: the architectures differ")
    weights = {}
    for k, v in first.items():
        if v.is_floating_point():
            weights[k] = torch.stack([s["model"][k].float() for s in states]).mean(0).half()
        else:  # integer buffers (e.g. BatchNorm's counter): keep the first
            weights[k] = v
    save_checkpoint(dst, {"model": weights, "config": states[0]["config"], "step": states[0].get("step"),
                          "sources": list(srcs)})


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    try:
        export(sys.argv[1:-1], sys.argv[-1])
    except VosError as e:
        sys.exit(f"error: {e}")
