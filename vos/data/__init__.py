"""Data: frame sources, masks, dataset layouts, synthetic videos and training clips. Depends on nothing else in vos
except the leaf helpers in vos.utils."""

from vos.data.datasets import LAYOUTS, Sequence, list_sequences
from vos.data.masks import DAVIS_PALETTE, MaskError, object_ids, read_mask, write_mask
from vos.data.video import FrameError, FrameFolder, FrameSource, VideoFile, open_frames

__all__ = ["LAYOUTS", "Sequence", "list_sequences", "DAVIS_PALETTE", "MaskError", "object_ids", "read_mask",
           "write_mask", "FrameError", "FrameFolder", "FrameSource", "VideoFile", "open_frames"]
