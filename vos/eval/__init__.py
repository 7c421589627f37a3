"""Evaluation: DAVIS J&F (identical to the official code) and the YouTube-VOS export."""

from vos.eval.davis import SequenceResult, evaluate_dataset, evaluate_masks, format_table, summarize
from vos.eval.metrics import f_measure, jaccard, statistics
from vos.eval.summary import foreground_iou, object_areas, per_video_spread

__all__ = ["SequenceResult", "evaluate_dataset", "evaluate_masks", "format_table", "summarize", "f_measure",
           "jaccard", "statistics", "foreground_iou", "object_areas", "per_video_spread"]
