"""Pseudo-label quality per label source over training (CSS: logit, representation, mix).

``label_source_figure(run_dir)`` reads a run's ``log.csv`` (columns ``pl_precision_<src>``
and ``pl_coverage_<src>``, written by ``css`` on datasets with hidden ground truth) and
draws ``RUN_DIR/figures/label_sources.png``: precision (left) and coverage (right) of each
source against the iteration. CSS's claim (paper Table 5) is that the mix labels are more
precise than the logit labels, at a lower coverage. Notebook 02 calls it; any run of a
method that logs these columns can be drawn with it afterwards.
"""
from __future__ import annotations

import csv
from pathlib import Path

from .figures import finish_legend, plot_series, plt, save_figure

SOURCES = ("logit", "rep", "mix")


def read_source_curves(log_csv: str | Path, sources=SOURCES) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{"precision" | "coverage": {source: [(iter, percent), ...]}}`` from ``log.csv``;
    empty cells are skipped (precision is empty while no pixel passes the threshold).
    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` if it has no
    ``pl_coverage_<source>`` column at all."""
    with Path(log_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, dict[str, list]] = {"precision": {}, "coverage": {}}
    for kind in out:
        for src in sources:
            key = f"pl_{kind}_{src}"
            out[kind][src] = [(int(r["iter"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    if not any(out["coverage"].values()):
        raise ValueError(f"{log_csv}: no pl_coverage_<source> values (a css run on a dataset with hidden ground truth?)")
    return out


def label_source_figure(run_dir: str | Path, path: str | Path | None = None, sources=SOURCES) -> Path:
    """Draw precision and coverage per label source of ``run_dir/log.csv`` into ``path``
    (default ``run_dir/figures/label_sources.png``) and return the path."""
    run_dir = Path(run_dir)
    curves = read_source_curves(run_dir / "log.csv", sources)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = {"logit": "#1f77b4", "rep": "#2ca02c", "mix": "#d62728"}
    for ax, kind in zip(axes, ("precision", "coverage")):
        for src, pts in curves[kind].items():
            plot_series(ax, pts, label=src, color=colours.get(src))
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"pseudo-label {kind} (%)")
        finish_legend(ax)
    axes[0].set_title(f"{run_dir.name}: precision above the threshold", fontsize=9)
    axes[1].set_title("coverage: share of pixels above it", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path or run_dir / "figures" / "label_sources.png")
