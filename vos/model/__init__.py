"""The HODOR model. Depends on nothing else in vos."""

from vos.model.attention import SoftMaskedAttention, default_alphas
from vos.model.backbone import BackboneError, build_backbone, lite0_classifier
from vos.model.hodor import HODOR, Features, logits_to_probs, merged_logits, probs_to_labels

__all__ = ["SoftMaskedAttention", "default_alphas", "BackboneError", "build_backbone", "lite0_classifier",
           "HODOR", "Features", "logits_to_probs", "merged_logits", "probs_to_labels"]
