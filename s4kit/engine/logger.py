"""``log.csv`` and TensorBoard: one row per logged iteration, appended.

``log.csv``: columns ``iter`` first, then the others sorted; a value a row lacks (or a NaN)
is an empty cell. Each row is appended to the file (the header is written once, when the file
is new), so earlier rows are never rewritten. Two events rewrite the whole file once,
atomically (a crash leaves the old or the new file, never half of one):

* a row holding a key the header lacks (``val_miou`` at the first periodic evaluation, a
  loss that starts later): the header widens to the union of every row's keys and the rows
  so far get empty cells in the new columns; the following rows append again;
* a resume: rows past the checkpoint's iteration (logged by the killed run after its last
  checkpoint) are dropped, so the log of a resumed run equals that of an uninterrupted one.

TensorBoard (``<run>/tb/``, ``tensorboard --logdir runs``): every value of every row but
``iter`` as a scalar of the same name at ``global_step = iter`` (NaN left out, as in the CSV).
On a resume the writer is opened with ``purge_step = checkpoint iteration + 1``, so
TensorBoard hides the killed run's events past the checkpoint and shows each step once.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

from ..io import atomic_path


def read_log(path: str | Path) -> list[dict]:
    """Rows of a ``log.csv`` as dicts of floats (``iter`` as int); empty cells are omitted."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row = {k: float(v) for k, v in raw.items() if v not in ("", None)}
            row["iter"] = int(row["iter"])
            rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[str]:
    return ["iter"] + sorted({k for r in rows for k in r} - {"iter"})


def _cells(row: dict) -> dict:
    return {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


class CSVLog:
    """The run's ``log.csv`` (and TensorBoard scalars), surviving resumes (see module docstring).

    Args:
        path: the ``log.csv`` file.
        keep_until: the checkpoint's iteration when resuming (rows up to it are kept, later ones
            dropped), 0 for a new run (an existing file is removed).
        enabled: write files (rank 0); other ranks keep the rows in memory only.
        tensorboard: the folder of the TensorBoard event files (``<run>/tb``), or None for none.
            Without the ``tensorboard`` package a warning is issued and only ``log.csv`` is written.
    """

    def __init__(self, path: str | Path, keep_until: int = 0, enabled: bool = True,
                 tensorboard: str | Path | None = None):
        self.path, self.enabled = Path(path), enabled
        old = read_log(self.path) if keep_until else []
        self.rows = [r for r in old if r["iter"] <= keep_until]
        self.columns: list[str] | None = None  # the header of the file on disk
        self.writer = None
        if not enabled:
            return
        if keep_until == 0 and self.path.exists():
            self.path.unlink()
        elif self.rows and (len(self.rows) != len(old) or self._header() != _columns(self.rows)):
            self._rewrite()  # drop the rows past the checkpoint, once
        elif self.rows:
            self.columns = self._header()
        elif self.path.exists():
            self.path.unlink()  # nothing up to the checkpoint was logged
        if tensorboard is not None:
            self.writer = _summary_writer(Path(tensorboard), keep_until)

    def _header(self) -> list[str]:
        with self.path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _rewrite(self) -> None:
        """Write every row under the union of their keys, atomically."""
        self.columns = _columns(self.rows)
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            for r in self.rows:
                w.writerow(_cells(r))

    def append(self, row: dict) -> None:
        """Add a row: append it to ``log.csv`` (rewrite once with a wider header when it has a new
        key) and to TensorBoard (rank 0 only; the other ranks only keep it in ``rows``)."""
        self.rows.append(row)
        if not self.enabled:
            return
        if self.columns is None or not set(row) <= set(self.columns):
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(_cells(row))
        if self.writer is not None:
            for k, v in row.items():
                if k != "iter" and not (isinstance(v, float) and math.isnan(v)):
                    self.writer.add_scalar(k, v, global_step=int(row["iter"]))

    def close(self) -> None:
        """Flush and close the TensorBoard writer (``log.csv`` is closed after every row)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary_writer(log_dir: Path, keep_until: int):
    """A ``SummaryWriter`` on ``log_dir`` that hides events past ``keep_until`` (a resume), or
    None (with a warning) when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        warnings.warn(f"{log_dir}: no TensorBoard scalars ({exc}); pip install tensorboard", stacklevel=3)
        return None
    return SummaryWriter(str(log_dir), purge_step=keep_until + 1 if keep_until else None)
