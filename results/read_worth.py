"""What the short-term path and its given-frame read are worth in TRAINING: a run's loss on batches of its own recipe
(the data seed of its config, no update), with the path whole, with the given-frame read off, and with the whole path
off. A read the training loss barely needs is a read the model does not learn to use, whatever it is worth later in a
long video (RESULTS.md, "The given-frame read matches better by the features' own cosine").

    python results/read_worth.py RUN [BATCHES] [key=value ...]   # runs/RUN/{checkpoint.pt,config.yaml}; 24 batches;
                                                                   # overrides of the recipe, e.g. data.clip_len=8
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from omegaconf import OmegaConf

from vos.model import hodor, short_term
from vos.train.loop import Trainer

MODES = ("whole path", "no given read", "no path")


def main(run: str, batches: int = 24, overrides: list[str] = ()) -> None:
    cfg = OmegaConf.merge(OmegaConf.load(f"runs/{run}/config.yaml"), OmegaConf.from_dotlist(list(overrides)))
    cfg.init_from, cfg.out_dir = f"runs/{run}/checkpoint.pt", f"/tmp/read_worth_{run}"
    trainer = Trainer(cfg)
    mode = MODES[0]
    forward, predict = short_term.ShortTermPath.forward, hodor.HODOR.predict

    def path_forward(self, keys, last, num_objects, given_frame=None):
        return forward(self, keys, last, num_objects, None if mode == "no given read" else given_frame)

    def model_predict(self, feats, memory, memory_valid, num_objects, last=None, given_frame=None):
        return predict(self, feats, memory, memory_valid, num_objects, None if mode == "no path" else last, given_frame)

    short_term.ShortTermPath.forward, hodor.HODOR.predict = path_forward, model_predict
    trainer.model.eval()
    losses = {m: [] for m in MODES}
    with torch.no_grad():
        for i, batch in zip(range(batches), trainer.loader()):
            for mode in MODES:
                torch.manual_seed(i)  # the same memory noise each way
                losses[mode].append(trainer.cycle(batch, cfg.optim.steps)[0].item())
    base = np.array(losses[MODES[0]])
    print(f"{run}: training loss over {batches} batches of its recipe (data seed {cfg.seed}) {' '.join(overrides)}")
    for m in MODES:
        d = np.array(losses[m]) - base
        print(f"  {m}: {np.mean(losses[m]):.4f}" + ("" if m == MODES[0] else
              f" ({100 * d.mean() / base.mean():+.1f} %; higher than the whole path on {int((d > 0).sum())} of {batches})"))


if __name__ == "__main__":
    args = sys.argv[2:]
    main(sys.argv[1], int(args.pop(0)) if args and "=" not in args[0] else 24, args)
