"""Export a training checkpoint as a shippable model: `python -m vos.train.export SRC.pt DST.pt`.

Keeps the weights (fp16 storage: the loader casts back to fp32) and the run's config, drops the optimizer,
scheduler and RNG states.
"""

from __future__ import annotations

import sys

from vos.utils.checkpoint import load_checkpoint, save_checkpoint


def export(src: str, dst: str) -> None:
    state = load_checkpoint(src)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(dst, {"model": weights, "config": state["config"], "step": state.get("step")})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    export(sys.argv[1], sys.argv[2])
