"""Training: cycles and losses, the loop. Uses vos.model and vos.data (and vos.inference/vos.eval for validation)."""
