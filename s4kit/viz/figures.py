"""Run figures: prediction overlays, per-class IoU bars, the t-SNE scatter with prototypes.

Every function writes one PNG and returns its path and closes its figure; outside a
notebook matplotlib runs headless (Agg).
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib


def use_headless_backend() -> None:
    """Switch matplotlib to Agg, except inside a Jupyter kernel, whose inline backend must
    survive a training run so that the notebook's own figures still show."""
    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")


use_headless_backend()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.palette import colorize, palette_array  # noqa: E402
from ..io import atomic_savefig  # noqa: E402


def denormalize(image: np.ndarray, mean, std) -> np.ndarray:
    """float (3, H, W) normalised -> uint8 (H, W, 3)."""
    x = image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def error_map(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): wrong pixels red, right ones dark grey, ignored (255) light grey."""
    out = np.full(target.shape + (3,), 45, np.uint8)
    out[(pred != target) & (target != 255)] = (220, 30, 30)
    out[target == 255] = 200
    return out


def overlays(path, images: list[np.ndarray], targets: list[np.ndarray], preds: list[np.ndarray], dataset: str,
             num_classes: int, title: str = "") -> Path:
    """Rows of (image, ground truth, prediction, errors); images uint8 (H, W, 3), maps int (H, W)."""
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n + 0.4), squeeze=False)
    for i, (im, gt, pr) in enumerate(zip(images, targets, preds)):
        err = error_map(gt, pr)
        for ax, x, name in zip(axes[i], (im, colorize(gt, dataset, num_classes), colorize(pr, dataset, num_classes),
                                         err), ("image", "ground truth", "prediction", "errors (red)")):
            ax.imshow(x, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def per_class_iou(path, names: list[str], ious: list[float], title: str = "") -> Path:
    """Horizontal bar chart of per-class IoU (percent), mean marked."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5, 0.28 * len(names) + 1))
    sns.barplot(x=ious, y=list(names), ax=ax, color="#4c72b0", orient="h")
    ax.axvline(float(np.mean(ious)), color="k", ls="--", lw=1, label=f"mIoU {np.mean(ious):.1f}")
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


ERROR_COLOUR = (0.85, 0.1, 0.1)  # wrongly predicted pixels: rings, error colouring


def class_colours(dataset: str, num_classes: int) -> np.ndarray:
    """float (num_classes, 3) in [0, 1]: the dataset palette's class colours, with black
    (VOC background, unused Cityscapes rows) drawn mid-grey so it shows on white."""
    pal = palette_array(dataset, num_classes)[:num_classes] / 255.0
    return np.where(pal.sum(1, keepdims=True) > 0, pal, 0.35)


def scatter_with_prototypes(ax, points: np.ndarray, labels: np.ndarray, names: list[str], dataset: str,
                            prototypes: np.ndarray | None = None, wrong: np.ndarray | None = None,
                            sizes=None, colours: np.ndarray | None = None, legend: bool = False) -> None:
    """The one scatter of embedded pixels in s4kit (run t-SNE, latent evolution, explorer).

    Args:
        ax: matplotlib Axes to draw into.
        points: float (N, 2) embedded pixels; labels: int (N,) their true classes.
        names: class names (K,); dataset: palette (``digits``, ``pascal``, ``cityscapes``).
        prototypes: float (K, 2) embedded class prototypes, NaN rows for absent classes;
            drawn as large outlined stars in their class colour.
        wrong: bool (N,) pixels drawn with a red ring (wrongly predicted).
        sizes: marker size (scalar or (N,)), e.g. PRCL's sigma^2; default 6.
        colours: float (N, 3) per-point colours replacing the class colours (prediction,
            error or sigma^2 colouring).
        legend: add a legend of the classes shown (and the ring, if any) right of the axes.
    """
    pal = class_colours(dataset, len(names))
    s = 6 if sizes is None else np.asarray(sizes)
    if colours is None:
        for k in np.unique(labels):
            sel = labels == k
            ax.scatter(points[sel, 0], points[sel, 1], s=s if np.ndim(s) == 0 else s[sel], color=pal[k],
                       label=names[k], alpha=0.75, linewidths=0)
    else:
        ax.scatter(points[:, 0], points[:, 1], c=colours, s=s, linewidths=0, alpha=0.8)
    if wrong is not None and wrong.any():
        ax.scatter(points[wrong, 0], points[wrong, 1], s=14, facecolors="none", edgecolors=[ERROR_COLOUR],
                   linewidths=0.35, alpha=0.6, label="wrongly predicted")
    if prototypes is not None:
        for k, (x, y) in enumerate(prototypes):
            if np.isfinite(x):
                ax.scatter([x], [y], marker="*", s=240, color=pal[k], edgecolors="black", linewidths=1.1)
    ax.set_xticks([]), ax.set_yticks([])
    if legend:
        ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))


def tsne_scatter(path, embedding: np.ndarray, labels: np.ndarray, names: list[str], dataset: str,
                 prototypes: np.ndarray | None = None, wrong: np.ndarray | None = None, title: str = "",
                 sizes: np.ndarray | None = None) -> Path:
    """One-panel figure of ``scatter_with_prototypes`` with a class legend, written to ``path``."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    scatter_with_prototypes(ax, embedding, labels, names, dataset, prototypes, wrong, sizes, legend=True)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_series(ax, pts: list[tuple[float, float]], **kwargs):
    """``ax.plot`` of ``(x, y)`` points as a line, with markers when there are too few points for a
    line to show (a short run logs one or two). Returns the ``Line2D``, or None for no points."""
    if not pts:
        return None
    x, y = zip(*pts)
    (line,) = ax.plot(x, y, marker="o" if len(pts) <= 2 else None, **kwargs)
    return line


def finish_legend(ax, fontsize: int = 8) -> None:
    """A legend when something is drawn, else a note in the axes (a run too short to log this)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)
    else:
        ax.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=ax.transAxes, color="0.4")


def curves(path, rows: list[dict], keys: list[str], title: str = "", ylabel: str = "") -> Path:
    """Line plot of ``keys`` of ``log.csv`` rows against ``iter`` (missing values skipped)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for key in keys:
        plot_series(ax, [(r["iter"], r[key]) for r in rows if key in r and r[key] == r[key]], label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    finish_legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (folders made, written atomically) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path, dpi=dpi)
    plt.close(fig)
    return path
