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
    """uint8 (H, W, 3) of int (H, W) maps: wrong pixels ``ERROR_COLOUR``, right ones dark grey
    (``RIGHT_GREY``), ignored (255) light grey (``IGNORED_GREY``)."""
    out = np.full(target.shape + (3,), RIGHT_GREY, np.uint8)
    out[(pred != target) & (target != 255)] = np.round(np.asarray(ERROR_COLOUR) * 255).astype(np.uint8)
    out[target == 255] = IGNORED_GREY
    return out


def overlays(path, images: list[np.ndarray], targets: list[np.ndarray], preds: list[np.ndarray], dataset: str,
             num_classes: int, title: str = "", names: list[str] | None = None) -> Path:
    """Rows of (image, ground truth, prediction, errors); images uint8 (H, W, 3), maps int (H, W)
    with 255 = ignored. Right of the panels: a legend of the classes in the ground truth and
    the predictions (``names``, default the class indices; "ignored (255)" when present) and
    one of the error panel's colours."""
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n + 0.4), squeeze=False)
    for i, (im, gt, pr) in enumerate(zip(images, targets, preds)):
        err = error_map(gt, pr)
        for ax, x, name in zip(axes[i], (im, colorize(gt, dataset, num_classes), colorize(pr, dataset, num_classes),
                                         err), ("image", "ground truth", "prediction", "errors")):
            ax.imshow(x, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    shown = np.unique(np.concatenate([np.ravel(m) for m in list(targets) + list(preds)])) if n else np.zeros(0, int)
    names = list(names) if names is not None else [str(k) for k in range(num_classes)]
    classes = [int(k) for k in shown if k < len(names)]
    pal = palette_array(dataset, num_classes) / 255.0
    handles = [swatch(pal[k], names[k]) for k in classes]
    if (shown == 255).any():
        handles.append(swatch(pal[255], "ignored (255)"))
    if handles:
        fig.legend(handles=handles, title="class", loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7,
                   title_fontsize=8, ncol=1 + len(handles) // 16, frameon=False)
    fig.legend(handles=[swatch(ERROR_COLOUR, "wrong"), swatch(np.full(3, RIGHT_GREY / 255), "right"),
                        swatch(np.full(3, IGNORED_GREY / 255), "ignored")],
               title="errors", loc="lower left", bbox_to_anchor=(1.0, 0.02), fontsize=7, title_fontsize=8,
               frameon=False)
    return save_figure(fig, path)


def swatch(colour, label: str):
    """A square legend handle of ``colour`` (RGB in [0, 1]) with a thin grey edge (light colours show)."""
    from matplotlib.patches import Patch

    return Patch(facecolor=tuple(np.asarray(colour, float)[:3]), edgecolor="0.5", linewidth=0.4, label=label)


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


# wrongly predicted pixels, in every figure: rings in the t-SNE scatters, the error panels. No
# digits class is near it (s4kit.data.palette.DIGITS_COLOURS, Delta E >= 30). VOC (chair
# (192, 0, 0)) and Cityscapes (person, rider) have reds of their own, so there the error mark
# is told apart by its shape: an unfilled ring around a filled dot, never a filled class dot;
# the error panels use no class colour at all.
ERROR_COLOUR = (0.85, 0.1, 0.1)
RIGHT_GREY = 45  # error panels: right pixels, uint8 grey
IGNORED_GREY = 200  # error panels: ignored (255) pixels


def class_colours(dataset: str, num_classes: int) -> np.ndarray:
    """float (num_classes, 3) in [0, 1]: the dataset palette's class colours
    (``s4kit.data.palette.palette_array``), with black (VOC background, unused Cityscapes rows)
    drawn mid-grey so it shows on white."""
    pal = palette_array(dataset, num_classes)[:num_classes] / 255.0
    return np.where(pal.sum(1, keepdims=True) > 0, pal, 0.35)


def class_legend_handles(names: list[str], dataset: str, classes, marker: str = "o") -> list:
    """Legend handles, one per class in ``classes`` (int indices into ``names``, in the given
    order): a ``marker`` in the class colour labelled with the class name."""
    from matplotlib.lines import Line2D

    pal = class_colours(dataset, len(names))
    return [Line2D([], [], ls="none", marker=marker, markersize=6, color=pal[int(k)], markeredgewidth=0,
                   label=names[int(k)]) for k in classes]


def marker_key_handles(prototypes: bool = True, wrong: bool = True, sizes: bool = False) -> list:
    """Legend handles explaining the scatter's marks: a star (class prototype), a ring in
    ``ERROR_COLOUR`` (wrongly predicted) and, with ``sizes``, "size: sigma^2" (PRCL)."""
    from matplotlib.lines import Line2D

    out = []
    if prototypes:
        out.append(Line2D([], [], ls="none", marker="*", markersize=10, color="0.8", markeredgecolor="black",
                          label="class prototype"))
    if wrong:
        out.append(Line2D([], [], ls="none", marker="o", markersize=6, markerfacecolor="none",
                          markeredgecolor=ERROR_COLOUR, markeredgewidth=1.0, label="wrongly predicted"))
    if sizes:
        out.append(Line2D([], [], ls="none", marker="o", markersize=7, color="0.6", label="size: σ²"))
    return out


def add_scatter_legends(target, names: list[str], dataset: str, classes, title: str = "true class",
                        key: list | None = None, fontsize: int = 7) -> None:
    """A class legend (``class_legend_handles``, titled ``title``) right of ``target`` (an Axes or
    a Figure) and below it, if ``key`` has handles, a second legend of them (``marker_key_handles``).

    Raises ValueError for a ``target`` that is neither Axes nor Figure.
    """
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    if not isinstance(target, (Axes, Figure)):
        raise ValueError(f"legend target {type(target).__name__}: expected a matplotlib Axes or Figure")
    handles = class_legend_handles(names, dataset, classes)
    x = 1.0 if isinstance(target, Axes) else 0.99
    opts = dict(fontsize=fontsize, title_fontsize=fontsize + 1, frameon=False)
    if handles:
        leg = target.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(x, 1.0),
                            ncol=1 + len(handles) // 22, **opts)
        if isinstance(target, Axes):
            target.add_artist(leg)  # an Axes keeps one legend: the next call must not replace this one
    if key:
        target.legend(handles=key, loc="lower left", bbox_to_anchor=(x, 0.0), **opts)


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
        wrong: bool (N,) pixels drawn with an unfilled ring in ``ERROR_COLOUR`` (wrongly predicted).
        sizes: marker size in points^2 (scalar or (N,)), e.g. PRCL's sigma^2; default 6.
        colours: float (N, 3) per-point colours replacing the class colours (prediction,
            error or sigma^2 colouring).
        legend: add ``add_scatter_legends`` right of the axes: the true classes shown (with
            ``colours`` the caller draws its own legend of what they mean) and the marks drawn.
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
    rings = wrong is not None and bool(np.any(wrong))
    if rings:
        ax.scatter(points[wrong, 0], points[wrong, 1], s=16, facecolors="none", edgecolors=[ERROR_COLOUR],
                   linewidths=0.5, alpha=0.7, label="wrongly predicted")
    stars = prototypes is not None and bool(np.isfinite(prototypes).any())
    if stars:
        for k, (x, y) in enumerate(prototypes):
            if np.isfinite(x):
                ax.scatter([x], [y], marker="*", s=240, color=pal[k], edgecolors="black", linewidths=1.1)
    ax.set_xticks([]), ax.set_yticks([])
    if legend:
        classes = np.unique(labels) if colours is None else []
        add_scatter_legends(ax, names, dataset, classes,
                            key=marker_key_handles(stars, rings, sizes is not None and np.ndim(sizes) > 0))


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
    """Write ``fig`` to ``path`` (folders made, written atomically) and close it. The image is
    cropped or grown to what is drawn (``bbox_inches="tight"``), so legends placed outside
    the axes are kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
