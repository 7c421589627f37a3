"""Inference: the Tracker (with its object, memory and locality components), the VideoSession API and infer.py's
runner. Uses vos.model and vos.data; knows nothing of training."""

from vos.inference.run import DEFAULT_CHECKPOINT, Runner
from vos.inference.session import VideoSession
from vos.inference.tracker import Tracker, probs_to_ids

__all__ = ["Tracker", "probs_to_ids", "DEFAULT_CHECKPOINT", "Runner", "VideoSession"]
