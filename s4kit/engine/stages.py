"""Stage timing: say what a run is doing after its progress bar, and how long each part took.

    with stage("final evaluation", timing, progress=True):
        ...

prints ``final evaluation ... 12.3 s`` (one line, to stderr) when the stage ends and stores
``timing["final evaluation"] = 12.3...`` (seconds, wall clock). On a terminal the line's
name is shown as the stage starts (``final evaluation ...``), so a silent step (a t-SNE fit)
says what it is doing; the duration then completes the same line. Elsewhere (a log file,
pytest's capture, a notebook) only the finished line is written, once.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


@contextmanager
def stage(name: str, timing: dict[str, float], progress: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """Time the ``with`` block as stage ``name``.

    Args:
        name: what the stage does, as printed and as the key of ``timing`` ("figures").
        timing: receives ``timing[name]`` = seconds (float, >= 0) when the block ends, also
            when it raises (the time until the error); a repeated name adds up.
        progress: print the stage line (only when the block ends without an error); False
            prints nothing (``timing`` is still filled).
        stream: where the line goes (default ``sys.stderr`` at the time of the call).
    """
    stream = stream if stream is not None else sys.stderr
    live = progress and _isatty(stream)
    if live:
        stream.write(f"{name} ...")
        stream.flush()
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        timing[name] = timing.get(name, 0.0) + time.perf_counter() - start
        if live:
            stream.write("\n")  # end the started line; the error says the rest
            stream.flush()
        raise
    else:
        seconds = time.perf_counter() - start
        timing[name] = timing.get(name, 0.0) + seconds
        if progress:
            back = "\r" if live else ""  # back over a progress bar (leave=False) that took the line meanwhile
            stream.write(f"{back}{name} ... {seconds:.1f} s\n")
            stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


TEXT_BARS = "S4KIT_TEXT_PROGRESS"  # set (to 1) by ``s4kit reproduce`` for the notebook's kernel


def progress_bar():
    """The tqdm class of s4kit's bars: ``tqdm.auto``'s (a widget inside Jupyter), or the plain
    text bar when the environment variable ``S4KIT_TEXT_PROGRESS`` is set: ``s4kit reproduce``
    sets it for the kernel it starts, so the training bar reaches the terminal as text (a
    widget's updates never leave the kernel under papermill)."""
    if os.environ.get(TEXT_BARS):
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm
