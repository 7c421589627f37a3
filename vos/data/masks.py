"""Reading and writing object masks as indexed (palette) PNGs, with the real-world problem cases handled.

A mask is an HxW uint8 array of object ids (0 = background). Ids are kept as given (1, 3, 7 stay 1, 3, 7),
and so is the input's palette, so outputs look like inputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from vos.utils import VosError, atomic_path


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: (256, 3) uint8, id 1 = dark red, 2 = green, ..."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


DAVIS_PALETTE = davis_palette()


class MaskError(VosError):
    pass


def _to_ids(img: Image.Image, path: Path, binary_255_is_object: bool) -> tuple[np.ndarray, np.ndarray | None]:
    mode = img.mode
    if mode == "P":
        pal = np.array(img.getpalette() or [], np.uint8).reshape(-1, 3)
        full = DAVIS_PALETTE.copy()
        full[: len(pal)] = pal[:256]
        return np.array(img, np.uint8), full
    if mode == "1":
        return np.array(img, np.uint8), None
    if mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.array(img)
        if arr.dtype.kind == "f":
            raise MaskError(f"{path}: floating-point mask images are not supported; save object ids as an indexed PNG")
        values = np.unique(arr)
        if binary_255_is_object and set(values.tolist()) <= {0, 255}:
            return (arr == 255).astype(np.uint8), None
        if values.max(initial=0) > 255:
            if set(values.tolist()) <= {0, 65535}:
                return (arr == 65535).astype(np.uint8), None
            raise MaskError(f"{path}: 16-bit mask has ids up to {values.max()}; at most 255 objects are supported")
        if set(values.tolist()) <= {0, 255}:
            warnings.warn(f"{path}: grayscale 0/255 mask read as one object (id 1); use an indexed PNG for ids")
            return (arr == 255).astype(np.uint8), None
        return arr.astype(np.uint8), None
    if mode in ("RGB", "RGBA", "LA"):
        rgb = np.array(img.convert("RGB"))
        if (rgb == rgb[..., :1]).all():  # grey RGB (some DAVIS-2016 masks): read as a grayscale mask
            return _to_ids(Image.fromarray(rgb[..., 0]), path, binary_255_is_object)
        colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        lut = {tuple(c): i for i, c in enumerate(DAVIS_PALETTE.tolist())}
        ids = np.array([lut.get(tuple(c), -1) for c in colours.tolist()])
        unknown = colours[ids < 0]
        if len(unknown):
            raise MaskError(
                f"{path}: RGB mask with {len(unknown)} colour(s) not in the DAVIS palette (e.g. {tuple(unknown[0])}); "
                "masks must be indexed (palette) PNGs whose pixel values are object ids, or RGB in the DAVIS palette"
            )
        warnings.warn(f"{path}: RGB mask mapped to object ids through the DAVIS palette; prefer indexed PNGs")
        return ids[inverse.reshape(-1)].reshape(rgb.shape[:2]).astype(np.uint8), None
    raise MaskError(f"{path}: unsupported mask image mode {mode}; save masks as indexed (palette) PNGs")


def read_mask(
    path: str | Path,
    size: tuple[int, int] | None = None,
    binary_255_is_object: bool = False,
    min_area: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a mask PNG as (ids HxW uint8, palette (256,3) or None).

    size: expected (H, W) of the frames. A mask at most 2 px off is resized (nearest) with a warning; a larger
        difference is an error. binary_255_is_object: DAVIS-2016 masks (0/255, 255 = the object).
    min_area: ids covering fewer pixels are reported (anti-aliased edges create such phantom ids).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            ids, palette = _to_ids(img, path, binary_255_is_object)
    except FileNotFoundError:
        raise MaskError(f"mask file not found: {path}") from None
    except (OSError, SyntaxError) as e:
        raise MaskError(f"cannot read mask {path}: {e} (is it a valid PNG?)") from None
    if size is not None and ids.shape != tuple(size):
        (h, w), (H, W) = ids.shape, size
        if abs(h - H) <= 2 and abs(w - W) <= 2:
            warnings.warn(f"{path}: mask is {w}x{h} but frames are {W}x{H}; resized (nearest neighbour)")
            ids = np.array(Image.fromarray(ids).resize((W, H), Image.NEAREST))
        else:
            raise MaskError(f"{path}: mask is {w}x{h} but the frames are {W}x{H}; masks must match the frame size")
    if min_area > 0:
        uniq, counts = np.unique(ids, return_counts=True)
        tiny = [int(u) for u, c in zip(uniq, counts) if u not in (0, 255) and c < min_area]
        if tiny:
            warnings.warn(f"{path}: object id(s) {tiny} cover fewer than {min_area} pixels: anti-aliased edges? "
                          "Masks must be saved without anti-aliasing (nearest-neighbour resizing).")
    return ids, palette


def write_mask(path: str | Path, ids: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write ids as an indexed PNG (atomically) with the given palette (DAVIS palette by default)."""
    img = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8), mode="P")
    img.putpalette((DAVIS_PALETTE if palette is None else np.asarray(palette, np.uint8)).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=1)  # level 6 (default) costs ~50 ms per 480p frame


def object_ids(ids: np.ndarray, void: int | None = 255) -> list[int]:
    """Sorted object ids present in a mask (background 0 and the void id excluded)."""
    return [int(u) for u in np.unique(ids) if u != 0 and u != void]
