"""The HODOR model. Depends on nothing else in vos."""

from vos.model.attention import SoftMaskedAttention, default_alphas
from vos.model.backbone import BackboneError, build_backbone, lite0_classifier
from vos.model.hodor import (HODOR, Features, StepOutput, force_masks, logits_to_probs, merged_logits, pad_to_stride,
                             probs_to_labels)

__all__ = ["SoftMaskedAttention", "default_alphas", "BackboneError", "build_backbone", "lite0_classifier",
           "HODOR", "Features", "StepOutput", "force_masks", "logits_to_probs", "merged_logits", "pad_to_stride",
           "probs_to_labels"]
