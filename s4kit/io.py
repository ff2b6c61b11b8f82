"""Safe file writes: atomic replacement and the run-folder lock.

Every file s4kit writes into a run or dataset folder goes through ``atomic_write_text`` (or
``atomic_path`` for writers that take a path, such as ``torch.save`` and ``savefig``): the
content is written to a temporary file in the same folder, flushed to disk and renamed over
the target, so a kill at any moment leaves either the old file or the new one, never a
truncated one.

``RunLock`` holds an exclusive ``fcntl`` lock on ``<run_dir>/.lock`` for the lifetime of a
training run, so a second process pointed at the same folder stops with one line naming the
PID that holds it instead of interleaving with it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import S4kitError


class RunFolderBusy(S4kitError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it is fsynced and renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    The temporary name is ``.<name>.<pid>.tmp`` (hidden, unique per process).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a kill leaves the old file or the new one.

    Raises ``OSError`` (no space, permission, not a directory) with ``path``'s folder unchanged.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock``, held until ``release()``.

    The lock file holds the owner's PID (for the message of the process that is refused);
    the kernel drops the lock when the owner exits, however it exits (``kill -9`` included),
    so a stale lock file never blocks a resume.

    Raises:
        RunFolderBusy: another process holds the lock (the message names its PID).
    """

    def __init__(self, run_dir: str | Path):
        import fcntl

        self.path = Path(run_dir) / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise RunFolderBusy(f"{Path(run_dir)}: in use by another s4kit process (PID {owner}, lock {self.path}); "
                                "wait for it to finish or use another run.dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Drop the lock (idempotent). The lock file stays: it is reused by the next run."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` through ``atomic_path`` (the format comes from ``path``'s suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


def atomic_savez(path: str | Path, compressed: bool = False, **arrays) -> Path:
    """``np.savez`` (or ``savez_compressed``) through ``atomic_path``; ``path`` keeps its name as given."""
    import numpy as np

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return path


def json_dumps(obj) -> str:
    """JSON text for metrics files: indent 1, numpy/torch scalars as floats, NaN and inf as ``null``
    (bare ``NaN`` is not JSON and breaks most parsers)."""
    import json
    import math

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (str, bool, int)) or x is None:
            return x
        x = float(x)
        return x if math.isfinite(x) else None

    return json.dumps(clean(obj), indent=1)
