"""``log.csv``: one row per logged iteration, rewritten whole at each append (files stay small).

Columns are the union of every row's keys (``iter`` first); a value a row lacks is empty.
On resume, rows past the checkpoint's iteration (logged by the killed run after its last
checkpoint) are dropped, so the log of a resumed run equals that of an uninterrupted one.
"""
from __future__ import annotations

import csv
import math
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


class CSVLog:
    """Append-only view of ``log.csv`` that survives resumes (see module docstring)."""

    def __init__(self, path: str | Path, keep_until: int = 0, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.rows = [r for r in read_log(self.path) if r["iter"] <= keep_until] if keep_until else []
        if enabled and keep_until == 0 and self.path.exists():
            self.path.unlink()

    def append(self, row: dict) -> None:
        """Add a row and rewrite the file atomically (rank 0 only)."""
        self.rows.append(row)
        if not self.enabled:
            return
        columns = ["iter"] + sorted({k for r in self.rows for k in r} - {"iter"})
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
