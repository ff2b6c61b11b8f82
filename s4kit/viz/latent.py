"""Latent-space measures and figures from snapshots (``s4kit viz``, notebook 06).

Measures of a representation sample R (N, D) with true labels y (N,) and prototypes P (K, D):

    silhouette  = mean_i (b_i - a_i) / max(a_i, b_i)   with cosine distance (scikit-learn)
    knn_accuracy = 5-fold cross-validated accuracy of a k-NN classifier (cosine, k = 10)
    proto_distance = mean_i (1 - cos(r_i, p_{y_i}))    over pixels whose class has a prototype

Higher silhouette and k-NN accuracy and a lower prototype distance mean more compact,
better separated classes: the property the contrastive papers argue for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .tsne import place, tsne_embed, unit_rows


def silhouette(reps: np.ndarray, labels: np.ndarray) -> float:
    """Cosine silhouette score in [-1, 1] (NaN with fewer than two classes)."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(silhouette_score(np.asarray(reps, np.float64), labels, metric="cosine"))


def knn_accuracy(reps: np.ndarray, labels: np.ndarray, k: int = 10, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated k-NN accuracy (percent), cosine metric, stratified folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    counts = np.bincount(labels - labels.min())
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2 or len(np.unique(labels)) < 2:
        return float("nan")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(labels) - 1), metric="cosine")
    return float(cross_val_score(clf, np.asarray(reps, np.float64), labels, cv=cv).mean() * 100)


def prototype_distance(reps: np.ndarray, labels: np.ndarray, prototypes: np.ndarray) -> float:
    """Mean cosine distance of each pixel to its own class prototype (classes without one skipped)."""
    protos = np.asarray(prototypes, np.float64)
    ok = np.isfinite(protos).all(1)[labels]
    if not ok.any():
        return float("nan")
    cos = (unit_rows(reps[ok]) * unit_rows(protos[labels[ok]])).sum(1)
    return float(np.mean(1 - cos))


def latent_measures(snapshot: dict, labels: np.ndarray, seed: int = 0) -> dict:
    """``{"silhouette", "knn_accuracy", "proto_distance"}`` of one snapshot."""
    reps = snapshot["rep"].astype(np.float32)
    labels = labels.astype(np.int64)
    return {"silhouette": silhouette(reps, labels), "knn_accuracy": knn_accuracy(reps, labels, seed=seed),
            "proto_distance": prototype_distance(reps, labels, snapshot["prototypes"].astype(np.float32))}


def embed_snapshots(snaps: list[tuple[int, dict]], seed: int = 0, n_iter: int = 500):
    """One t-SNE (``viz.tsne.tsne_embed``) fitted on the last snapshot; every snapshot and
    every set of prototypes placed with ``viz.tsne.place`` so positions are comparable over
    training.

    Returns ``[(iteration, points (N, 2), prototypes (K, 2) with NaN rows), ...]``.
    """
    last = snaps[-1][1]
    final, _, emb = tsne_embed(last["rep"], seed=seed, n_iter=n_iter)
    return [(it, final if s is last else place(emb, s["rep"]), place(emb, s["prototypes"])) for it, s in snaps]


def sigma_sizes(snapshot: dict) -> np.ndarray | None:
    """Marker sizes from PRCL's sigma^2 extra (larger variance, larger marker), if present."""
    key = next((k for k in snapshot if k.startswith("extra_sigma")), None)
    if key is None:
        return None
    v = snapshot[key].astype(np.float64)
    rng = v.max() - v.min()
    return 3 + 30 * (v - v.min()) / (rng if rng > 0 else 1)


def evolution_figure(path, embedded, labels, snaps, names, dataset, title: str = "") -> Path:
    """One panel per snapshot in a single embedding (``embed_snapshots``), titled by its training
    iteration; right of the panels a legend of the true classes in ``labels`` (int (N,)) named
    by ``names`` and a key of the marks (prototype star, wrong-prediction ring, sigma^2 size)."""
    from .figures import add_scatter_legends, marker_key_handles, save_figure, scatter_with_prototypes
    from .figures import use_headless_backend

    use_headless_backend()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(embedded), figsize=(3.2 * len(embedded), 3.4), squeeze=False)
    final = embedded[-1][1]
    lo, hi = final.min(0), final.max(0)
    pad = 0.08 * (hi - lo)
    for ax, (it, pts, protos), (_, s) in zip(axes[0], embedded, snaps):
        scatter_with_prototypes(ax, pts, labels, names, dataset, protos, s["pred"] != labels, sigma_sizes(s))
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])  # one frame for all panels: positions are comparable
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(f"iteration {it}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    last = snaps[-1][1]
    add_scatter_legends(fig, names, dataset, np.unique(labels),
                        key=marker_key_handles(any(np.isfinite(p).any() for _, _, p in embedded),
                                               any(bool((s["pred"] != labels).any()) for _, s in snaps),
                                               sigma_sizes(last) is not None))
    return save_figure(fig, path, dpi=100)


def comparison_figure(path, panels: list[dict], names, dataset) -> Path:
    """Final embeddings side by side: each panel dict has ``title``, ``points`` (N, 2),
    ``prototypes`` (K, 2), ``labels`` (N,), ``pred`` (N,) and optional ``sizes`` (N,); right of
    the panels a legend of the true classes of all panels and a key of the marks."""
    from .figures import add_scatter_legends, marker_key_handles, save_figure, scatter_with_prototypes
    from .figures import use_headless_backend

    use_headless_backend()
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows + 0.3), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, p in zip(axes.flat, panels):
        scatter_with_prototypes(ax, p["points"], p["labels"], names, dataset, p["prototypes"],
                                p["pred"] != p["labels"], p.get("sizes"))
        ax.set_title(p["title"], fontsize=9)
    fig.suptitle("final val-pixel representations (t-SNE); stars: prototypes; red rings: wrong predictions",
                 fontsize=9)
    fig.tight_layout()
    if panels:
        classes = np.unique(np.concatenate([np.asarray(p["labels"]) for p in panels]))
        add_scatter_legends(fig, names, dataset, classes,
                            key=marker_key_handles(any(np.isfinite(p["prototypes"]).any() for p in panels),
                                                   any(bool((p["pred"] != p["labels"]).any()) for p in panels),
                                                   any(p.get("sizes") is not None for p in panels)))
    return save_figure(fig, path, dpi=100)
