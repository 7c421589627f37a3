"""A local browser app: `python -m vos.app` (Flask). Upload a video or pick the demo clip, scrub to a frame,
draw a box or click (or upload a mask PNG) for each object, propagate with a progress bar, then view the
overlay and download the masks. Everything it writes stays under its output folder."""

from vos.app.server import create_app

__all__ = ["create_app"]
