"""The set of tracked objects: ids, their channel order, adding and removing (after Cutie's object_manager)."""

from __future__ import annotations

from vos.utils import VosError


class ObjectManager:
    """Fields:
      ids: object ids in channel order. Probabilities have channel 0 = background and channel k + 1 = ids[k];
        descriptors have row num_bg + k. A new object is appended; a removed one closes its gap.
    """

    def __init__(self):
        self.ids: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, obj: int) -> bool:
        return obj in self.ids

    def index(self, obj: int) -> int:
        """0-based position of `obj` among the objects."""
        return self.ids.index(obj)

    def add(self, obj: int) -> int:
        """Track `obj` (no-op if tracked); returns its 0-based position."""
        if obj not in self.ids:
            self.ids.append(obj)
        return self.ids.index(obj)

    def remove(self, obj: int) -> int:
        """Stop tracking `obj`; returns the position it had (the memory drops that row)."""
        if obj not in self.ids:
            raise VosError(f"object {obj} is not tracked (tracked: {self.ids})")
        k = self.ids.index(obj)
        del self.ids[k]
        return k
