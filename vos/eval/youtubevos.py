"""Export predictions in the YouTube-VOS evaluation server's layout: one zip holding
Annotations/<video>/<frame>.png for exactly the frames listed in meta.json."""

from __future__ import annotations

import zipfile
from pathlib import Path

from vos.utils import VosError, atomic_path


def export_youtubevos(results_dir: str | Path, listed: dict[str, list[str]], out_zip: str | Path) -> Path:
    """listed: video -> frame names the server expects (Sequence.eval_frames). Missing files are an error."""
    results_dir, out_zip = Path(results_dir), Path(out_zip)
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for video, frames in sorted(listed.items()):
            for f in frames:
                src = results_dir / video / f"{f}.png"
                if not src.is_file():
                    raise VosError(f"missing prediction {src} (listed in meta.json); run inference on every frame")
                zf.write(src, f"Annotations/{video}/{f}.png")
    return out_zip
