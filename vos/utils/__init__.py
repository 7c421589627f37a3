"""Leaf helpers shared by every part of the package (no imports from the rest of vos)."""

from vos.utils.errors import VosError
from vos.utils.io import atomic_path, natural_key, quiet_stderr, release_memory

__all__ = ["VosError", "atomic_path", "natural_key", "quiet_stderr", "release_memory"]
