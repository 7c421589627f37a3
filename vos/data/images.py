"""Still images: the one list of image extensions and the one image reader of the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vos.utils import VosError, natural_key

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural order ('frame2' before 'frame10')."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: natural_key(p.name))


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB; resized (bilinear) to size=(H, W) if given. Unreadable files raise VosError naming
    the file."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im)
    except FileNotFoundError:
        raise VosError(f"image not found: {path}") from None
    except (OSError, SyntaxError) as e:
        raise VosError(f"cannot read image {path}: {e} (corrupt or truncated image?)") from None
