"""How well a run's features follow each pixel through its training clips: the contrastive random walk's loss
(vos.train.cycles.walk_loss, temperature 0.07) of its stride-8 features on batches of the `l2given` recipe's data
(data seed 600, no update). log(576) = 6.36 for features that tell no pixel of a 288 x 512 frame apart; 0 for features
that bring every pixel home (RESULTS.md, "The contrastive random walk").

    python results/walk_loss.py RUN [RUN ...]   # runs/RUN/checkpoint.pt; 8 batches each
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from omegaconf import OmegaConf

from vos.config import TrainConfig, load_config
from vos.train.cycles import split_features, walk_loss
from vos.train.loop import Trainer

RECIPE = OmegaConf.load("configs/experiments/l2given.yaml")
BATCHES = 8


def main(runs: list[str]) -> None:
    for run in runs:
        cfg = load_config(TrainConfig, RECIPE.train, [*RECIPE.train_overrides, "log.wandb=disabled",
                                                      f"init_from=runs/{run}/checkpoint.pt", f"out_dir=/tmp/walk_loss_{run}"])
        trainer = Trainer(cfg)
        trainer.model.eval()
        losses = []
        with torch.no_grad():
            for _, batch in zip(range(BATCHES), trainer.loader()):
                feats = split_features(trainer.model, batch["images"].to(trainer.device))
                losses.append(walk_loss([f.f8 for f in feats]).item())
        print(f"{run}: walk loss over {BATCHES} batches of the l2given recipe (data seed 600): {np.mean(losses):.3f} "
              f"(per batch {' '.join(f'{x:.2f}' for x in losses)})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
