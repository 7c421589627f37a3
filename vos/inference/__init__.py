"""Inference: the streaming Propagator (with its object and memory managers), the VideoSession API and
infer.py's runner. Uses vos.model and vos.data."""

from vos.checkpoint import load_model
from vos.inference.predictor import Propagator, probs_to_ids
from vos.inference.run import DEFAULT_CHECKPOINT, Runner
from vos.inference.session import VideoSession

__all__ = ["Propagator", "probs_to_ids", "DEFAULT_CHECKPOINT", "Runner", "load_model", "VideoSession"]
