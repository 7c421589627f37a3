"""The app's HTTP API (Flask). One session per uploaded video, under <out>/<session id>/ (ids are random hex
made here, file names are fixed here: no path from the client is ever used).

Several people may use it at once (Flask serves each request in a thread): each session's video reader is used
under the session's lock, the model is loaded once (under a lock) and shared, every propagation has its own
Tracker, and sessions are evicted (reader closed, folder removed) when idle for `idle_minutes` or when more
than `max_sessions` exist (least recently used first; a session that is propagating is never evicted)."""

from __future__ import annotations

import io
import re
import shutil
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
from flask import Flask, abort, jsonify, request, send_file, send_from_directory
from PIL import Image

from vos.utils import VosError

DEMO_CLIP = Path(__file__).resolve().parents[2] / "examples" / "bedroom.mp4"
SID = re.compile(r"^[0-9a-f]{32}$")
BUSY = ("adapting", "running")  # states in which a session is never evicted nor started again


class Session:
    """One video in the app: its folder, frames (streamed; read under `lock`), prompts (frame index -> (H, W)
    uint8 id map, shown on the frames and handed to a VideoSession when propagating), the propagation's state,
    and when it was last used (for eviction)."""

    def __init__(self, folder: Path, video: Path):
        from vos.data import VideoFile

        self.folder, self.video = folder, video
        self.frames = VideoFile(video)  # raises FrameError for anything that is not a readable video
        self.prompts: dict[int, np.ndarray] = {}
        self.state, self.done, self.total, self.error = "ready", 0, len(self.frames), ""
        self.adapt_seconds = 0.0
        self.lock = threading.Lock()
        self.last_used = time.monotonic()

    def frame(self, t: int) -> np.ndarray:
        with self.lock:  # one decoder, many request threads
            return self.frames[t]

    def close(self) -> None:
        with self.lock:
            self.frames.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def info(self) -> dict:
        h, w = self.frames.native_size
        return {"session": self.folder.name, "frames": len(self.frames), "width": w, "height": h,
                "fps": self.frames.fps}


def create_app(out_dir: str | Path = "outputs/app", checkpoint: str | None = None, max_upload_mb: int = 500,
               max_frames: int = 20000, max_sessions: int = 8, idle_minutes: float = 60,
               overrides: list[str] | None = None) -> Flask:
    """overrides: inference config keys (as on infer.py's command line); the page's "adapt to this video" box
    (checked by default) runs test-time adaptation with its `adapt` settings."""
    from vos.adapt import Adaptation, runner as make_runner
    from vos.config import InferConfig, load_config
    from vos.data import DAVIS_PALETTE, read_mask
    from vos.inference import Runner
    from vos.inference.prompts import mask_from_prompts
    from vos.inference.writers import overlay

    infer_cfg = load_config(InferConfig, None, list(overrides or []))  # read (and checked) once
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_mb * 2 ** 20
    sessions: dict[str, Session] = {}
    app.config["vos_sessions"] = sessions  # for tests and monitoring
    sessions_lock, model_lock = threading.Lock(), threading.Lock()
    runner_box: dict = {}

    def runner() -> Runner:
        with model_lock:  # the model loads once, on first use, however many requests ask at once
            if "r" not in runner_box:
                runner_box["r"] = make_runner(infer_cfg, "hodor", checkpoint, progress=False)
                print(runner_box["r"].precision)
        return runner_box["r"]

    def evict() -> None:
        """Close idle sessions, then the least recently used ones beyond max_sessions - 1 (room for a new one)."""
        with sessions_lock:
            now = time.monotonic()
            idle = [k for k, s in sessions.items() if s.state not in BUSY and now - s.last_used > 60 * idle_minutes]
            spare = sorted((k for k, s in sessions.items() if s.state not in BUSY and k not in idle),
                           key=lambda k: sessions[k].last_used)
            gone = idle + spare[: max(0, len(sessions) - len(idle) - (max_sessions - 1))]
            closing = [sessions.pop(k) for k in gone]
        for s in closing:
            s.close()

    def fail(message: str, code: int = 400):
        return jsonify({"error": message}), code

    def session(sid: str) -> Session:
        s = sessions.get(sid) if SID.match(sid) else None
        if s is None:
            abort(404)
        s.last_used = time.monotonic()
        return s

    def frame_index(s: Session, value) -> int:
        try:
            t = int(value)
        except (TypeError, ValueError):
            raise VosError(f"frame must be a number, not {value!r}") from None
        if not 0 <= t < len(s.frames):
            raise VosError(f"frame {t} outside the video (0..{len(s.frames) - 1})")
        return t

    def new_session(source: Path | None, upload=None):
        evict()
        if len(sessions) >= max_sessions:
            return fail(f"the app is busy: {len(sessions)} videos are being segmented; try again in a minute", 503)
        sid = uuid.uuid4().hex
        folder = out / sid
        folder.mkdir()
        video = folder / "input.mp4"
        try:
            if upload is not None:
                upload.save(video)
            else:
                shutil.copyfile(source, video)
            s = Session(folder, video)
            if len(s.frames) > max_frames:
                raise VosError(f"the video has {len(s.frames)} frames; this app takes up to {max_frames}")
        except VosError as e:
            shutil.rmtree(folder, ignore_errors=True)
            return fail(f"{'this file is not a video we can read' if 'open video' in str(e) else e}".replace(
                str(video), "the upload"))
        with sessions_lock:
            sessions[sid] = s
        return jsonify(s.info())

    @app.errorhandler(413)
    def too_large(_):
        return fail(f"the upload is larger than {max_upload_mb} MB", 413)

    @app.errorhandler(VosError)
    def vos_error(e):
        return fail(str(e))

    @app.get("/")
    def index():
        return send_from_directory(Path(__file__).parent / "static", "index.html")

    @app.post("/api/upload")
    def upload():
        f = request.files.get("video")
        if f is None or not f.filename:
            return fail("choose a video file first")
        return new_session(None, f)

    @app.post("/api/demo")
    def demo():
        if not DEMO_CLIP.is_file():
            return fail("the demo clip is missing from this installation", 404)
        return new_session(DEMO_CLIP)

    @app.get("/api/<sid>/frame/<int:t>.jpg")
    def frame(sid: str, t: int):
        s = session(sid)
        t = frame_index(s, t)
        img = s.frame(t)
        if t in s.prompts:
            img = overlay(img, s.prompts[t], DAVIS_PALETTE)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        buf.seek(0)
        return send_file(buf, mimetype="image/jpeg")

    @app.post("/api/<sid>/prompt")
    def prompt(sid: str):
        """JSON {frame, object, box: [x0, y0, x1, y1] or null, points: [[x, y, label], ...]}: GrabCut mask of one
        object, merged into the frame's id map."""
        from vos.inference.prompts import parse_box

        s = session(sid)
        body = request.get_json(silent=True) or {}
        t = frame_index(s, body.get("frame"))
        obj = int(body.get("object", 1))
        if not 1 <= obj <= 254:
            raise VosError("object ids go from 1 to 254")
        box = parse_box(",".join(str(v) for v in body["box"])) if body.get("box") else None
        points = [(int(x), int(y), int(label)) for x, y, label in body.get("points", [])]
        ids = mask_from_prompts(s.frame(t), [box] if box else [], points)
        current = s.prompts.get(t, np.zeros(s.frames.native_size, np.uint8))
        current[current == obj] = 0
        current[ids > 0] = obj
        s.prompts[t] = current
        return jsonify({"frame": t, "objects": sorted(int(k) for k in np.unique(current) if k)})

    @app.post("/api/<sid>/mask")
    def mask(sid: str):
        s = session(sid)
        t = frame_index(s, request.form.get("frame", 0))
        f = request.files.get("mask")
        if f is None:
            return fail("choose a mask PNG first")
        path = s.folder / "uploaded_mask.png"
        f.save(path)
        try:
            ids, _ = read_mask(path)
        except VosError as e:
            return fail(str(e).replace(str(path), "the mask"))
        if ids.shape != s.frames.native_size:
            h, w = s.frames.native_size
            return fail(f"the mask is {ids.shape[1]}x{ids.shape[0]} but the video is {w}x{h}")
        if not ids.any():
            return fail("the mask is empty: it has no object pixels")
        s.prompts[t] = ids
        return jsonify({"frame": t, "objects": sorted(int(k) for k in np.unique(ids) if k)})

    @app.post("/api/<sid>/clear")
    def clear(sid: str):
        s = session(sid)
        s.prompts.pop(frame_index(s, (request.get_json(silent=True) or {}).get("frame")), None)
        return jsonify({"ok": True})

    @app.post("/api/<sid>/propagate")
    def propagate(sid: str):
        s = session(sid)
        if not s.prompts:
            return fail("draw a box, click, or upload a mask for at least one object first")
        adapt = bool((request.get_json(silent=True) or {}).get("adapt", True))  # on unless the box is unchecked
        with s.lock:
            if s.state in BUSY:
                return fail("already propagating")
            s.state, s.done, s.error, s.adapt_seconds = ("adapting" if adapt else "running"), 0, "", 0.0
        prompts = dict(s.prompts)

        def work():
            try:
                def progress(done, total):
                    s.state, s.done, s.total = "running", done, total
                r = runner()
                video = r.new_session(s.video)  # its own reader and Tracker: nothing shared but the model
                for t, ids in sorted(prompts.items()):
                    video.add_mask(t, ids)

                # fine-tune copies of the model on this video's given frames first; the page shows the seconds
                video.adapt = Adaptation(infer_cfg.adapt, progress=False, amp=infer_cfg.amp,
                                         on_progress=lambda done, total, sec: setattr(s, "adapt_seconds", sec)
                                         ) if adapt and infer_cfg.adapt.steps else None
                r.run_session(video, "result", s.video, s.folder, overlay_mp4=True, progress=False, on_frame=progress)
                s.state = "done"
            except Exception as e:  # reported to the page, not lost in a thread
                s.state, s.error = "error", str(e)

        started = s.state
        threading.Thread(target=work, daemon=True).start()
        return jsonify({"state": started})

    @app.get("/api/<sid>/status")
    def status(sid: str):
        s = session(sid)
        return jsonify({"state": s.state, "done": s.done, "total": s.total, "error": s.error,
                        "adapt_seconds": round(s.adapt_seconds, 1)})

    @app.get("/api/<sid>/overlay.mp4")
    def overlay_video(sid: str):
        s = session(sid)
        path = s.folder / "result_overlay.mp4"
        if s.state != "done" or not path.is_file():
            abort(404)
        return send_file(path, mimetype="video/mp4", as_attachment=request.args.get("download") == "1",
                         download_name="overlay.mp4")

    @app.get("/api/<sid>/masks.zip")
    def masks_zip(sid: str):
        s = session(sid)
        if s.state != "done":
            abort(404)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for p in sorted((s.folder / "result").glob("*.png")):
                z.write(p, f"masks/{p.name}")
        buf.seek(0)
        return send_file(buf, mimetype="application/zip", as_attachment=True, download_name="masks.zip")

    return app
