import contextlib
import os
import shutil
import re
from pathlib import Path
from typing import Iterator


def natural_key(name: str) -> list:
    """Sort key so that 'frame2' comes before 'frame10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes.

    A crash or interrupt mid-write never leaves a half-written file (or folder) under the final name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # keep the suffix: writers infer formats from it
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the process's C-level stderr (fd 2) for the block: libraries such as decord/FFmpeg print their
    own log lines on errors that we report ourselves, more clearly."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def release_memory() -> None:
    """Hand memory freed by Python and torch back to the operating system (glibc's malloc_trim): after a burst of
    large temporary allocations (test-time adaptation's training), the process's peak otherwise adds the freed
    but kept memory to whatever comes next. A no-op where glibc is absent."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
