"""Frame sources: a video file (decord2, streamed) or a folder of images, behind one small interface.

A frame source is a sequence of RGB uint8 frames (H, W, 3) with `names` (used for output file names),
`size` (H, W after optional resizing) and `fps`. Nothing decodes a whole video into memory.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from vos.data.images import IMAGE_EXTS, list_images, read_image
from vos.utils import VosError, quiet_stderr

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class FrameError(VosError):
    pass


def _resized_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    if not short_side or min(h, w) == short_side:
        return h, w
    s = short_side / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


class FrameSource:
    """Frames of one video, decoded on demand. Fields: names (one per frame, e.g. "00000"), size (H, W) of the
    frames returned (after the optional resize to `short_side`), native_size (H, W) of the video itself, fps."""

    names: list[str]
    size: tuple[int, int]
    native_size: tuple[int, int]
    fps: float

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Release any open decoder."""

    def backwards(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index, frame) from `start` down to 0."""
        for i in range(start, -1, -1):
            yield i, self[i]


class VideoFile(FrameSource):
    """A video file. Frames asked for in order (what inference does) are decoded one after the other by PyAV;
    any other access (training clips, scrubbing, the backward pass) goes through a random-access decord2
    reader. Measured: a decord reader keeps memory in proportion to the video's length (+0.7 GB for 2,000
    frames of 480p next to the model), the sequential PyAV decoder does not. Decoders open lazily, in the
    process that first reads a frame (a reader opened in a parent process hangs forked DataLoader workers),
    and are never pickled."""

    SKIP_AHEAD = 64  # frames the sequential decoder may decode and drop to reach a later frame

    def __init__(self, path: str | Path, short_side: int | None = None):
        import av

        self.path = Path(path)
        if not self.path.is_file():
            raise FrameError(f"video not found: {self.path}")
        self.short_side = short_side
        self._reader = self._seq = self._container = None
        self._seq_next = 0
        self._pid = os.getpid()  # PyAV decodes only in this process; forked DataLoader workers use decord
        try:
            with quiet_stderr(), av.open(str(self.path)) as c:  # metadata; FFmpeg's own log lines stay quiet
                stream = c.streams.video[0]
                stream.thread_type = "NONE"  # no decoder threads in a process that may fork workers
                n, fps = stream.frames, float(stream.average_rate or 24.0)
                first = next(c.decode(stream))
                h, w = first.height, first.width
                if n <= 0:  # no frame count in the container: count the packets
                    c.seek(0)
                    n = sum(1 for pkt in c.demux(stream) if pkt.size)
        except (IndexError, StopIteration):
            raise FrameError(f"video {self.path} has no video frames") from None
        except Exception as e:
            raise FrameError(f"cannot open video {self.path}: not a video FFmpeg can read, or truncated or corrupt "
                             f"({str(e).splitlines()[0][:200]})") from None
        self.native_size = (h, w)
        self.size = _resized_size(h, w, short_side)
        self.fps = fps
        self.names = [f"{i:05d}" for i in range(n)]

    def _open(self, height: int, width: int):
        import decord

        try:
            with quiet_stderr():  # decord prints its own C++ log line before raising; our error says it better
                return decord.VideoReader(str(self.path), ctx=decord.cpu(0), width=width or -1, height=height or -1,
                                          num_threads=1)
        except Exception as e:
            raise FrameError(f"cannot open video {self.path}: not a video FFmpeg can read, or truncated or corrupt "
                             f"({str(e).splitlines()[0][:200]})") from None

    def __getstate__(self):
        return {**self.__dict__, "_reader": None, "_seq": None, "_seq_next": 0, "_container": None}

    def close(self) -> None:
        """Release the decoders (they reopen if a frame is read again)."""
        if self._container is not None:
            self._container.close()
        self._reader = self._seq = self._container = None
        self._seq_next = 0

    def _sequential(self, i: int) -> np.ndarray:
        import av

        if self._seq is None:
            self._container = av.open(str(self.path))
            stream = self._container.streams.video[0]
            stream.thread_type = "NONE"  # no decoder threads: nothing half-held if the process forks
            self._seq, self._seq_next = self._container.decode(stream), 0
        while True:
            frame = next(self._seq)
            self._seq_next += 1
            if self._seq_next - 1 == i:
                return self._resize(frame.to_ndarray(format="rgb24"))

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        """Both decoders give native frames; one resize (area) makes them the same at any size."""
        if frame.shape[:2] == self.size:
            return frame
        return cv2.resize(frame, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            here = os.getpid() == self._pid
            if here and i < min(self._seq_next, self.SKIP_AHEAD):
                # an early frame again (test-time adaptation read the first frame, then propagation starts):
                # restart the sequential decoder rather than open decord's reader, which would then hold memory in
                # proportion to the video's length for the rest of the pass (+0.6 GB on a 82-frame 480p mp4)
                self.close()
            if here and self._seq_next <= i < self._seq_next + self.SKIP_AHEAD and (self._seq is not None
                                                                                 or i < self.SKIP_AHEAD):
                return self._sequential(i)
            if self._reader is None:
                self._reader = self._open(0, 0)
            return self._resize(self._reader[i].asnumpy())
        except FrameError:
            raise
        except StopIteration:
            raise FrameError(f"{self.path} ends before frame {i} (truncated?)") from None
        except Exception as e:
            raise FrameError(f"cannot decode frame {i} of {self.path}: {e}") from None

    def backwards(self, start: int, chunk: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        """(index, frame) from `start` down to 0, decoded forwards in chunks of `chunk` frames: seeking back one
        frame at a time would decode a whole group of pictures per frame. Holds at most one chunk."""
        for hi in range(start, -1, -chunk):
            lo = max(0, hi - chunk + 1)
            if self._reader is None:
                self._reader = self._open(0, 0)
            try:
                batch = self._reader.get_batch(list(range(lo, hi + 1))).asnumpy()
            except Exception as e:
                raise FrameError(f"cannot decode frames {lo}-{hi} of {self.path}: {e}") from None
            for i in range(hi, lo - 1, -1):
                yield i, self._resize(batch[i - lo])


class FrameFolder(FrameSource):
    """A folder of jpg/jpeg/png frames in natural order. Mixed frame sizes are an error unless resizing."""

    def __init__(self, path: str | Path, short_side: int | None = None, fps: float = 24.0):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FrameError(f"frame folder not found: {self.path}")
        self.files = list_images(self.path)
        if not self.files:
            raise FrameError(f"no {'/'.join(IMAGE_EXTS)} frames in {self.path}")
        self.names = [p.stem for p in self.files]
        self.short_side = short_side
        self.fps = fps
        with Image.open(self.files[0]) as im:
            w, h = im.size
        self.native_size = (h, w)
        self.size = _resized_size(h, w, short_side)

    def __getitem__(self, i: int) -> np.ndarray:
        p = self.files[i]
        try:
            if not self.short_side:  # frames of one video must share a size
                with Image.open(p) as im:
                    size = im.size
                if size != (self.native_size[1], self.native_size[0]):
                    raise FrameError(f"{p}: frame is {size[0]}x{size[1]} but the first frame is "
                                     f"{self.native_size[1]}x{self.native_size[0]}; frames of one video must share "
                                     "a size (or ask for resizing)")
            return read_image(p, self.size)
        except FrameError:
            raise
        except (VosError, OSError, SyntaxError) as e:
            raise FrameError(f"cannot read frame {p}: {e}") from None


def open_frames(path: str | Path, short_side: int | None = None) -> FrameSource:
    """A video file or a frame folder, by what `path` is."""
    p = Path(path)
    if p.is_dir():
        return FrameFolder(p, short_side)
    if p.is_file():
        return VideoFile(p, short_side)
    raise FrameError(f"input not found: {p} (give a video file or a folder of frames)")


class Mp4Writer:
    """Streaming H.264 mp4 writer (PyAV). The file appears under its name only when closed without error."""

    def __init__(self, path: str | Path, fps: float = 24.0, crf: int = 20):
        import av

        from vos.utils import atomic_path

        self.fps, self.crf = fps, crf
        self._files = contextlib.ExitStack()  # the temporary file is renamed onto `path` only on a clean exit
        self._tmp = self._files.enter_context(atomic_path(path))
        try:
            self._container = av.open(str(self._tmp), "w")
        except BaseException:
            self._files.__exit__(*sys.exc_info())  # removes the temporary file
            raise
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        import av

        if self._stream is None:
            h, w = frame.shape[:2]
            self._stream = self._container.add_stream("libx264", rate=int(round(self.fps)),
                                                      options={"crf": str(self.crf)})
            self._stream.width, self._stream.height, self._stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        f = np.ascontiguousarray(frame[: self._stream.height, : self._stream.width])
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            self._container.mux(packet)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._stream is not None and exc_type is None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._files.__exit__(exc_type, exc, tb)
