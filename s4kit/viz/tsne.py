"""t-SNE of pixel representations with class prototypes placed in the same embedding.

One fit for every t-SNE in s4kit (``tsne_embed``): the run figure ``figures/tsne.png``, the
latent-space evolution of ``s4kit viz`` and notebook 06, and the explorer. openTSNE fits the
embedding on L2-normalised pixel representations; prototypes and earlier snapshots are then
placed with ``TSNEEmbedding.transform`` (``place``): they are not part of the fit, so they
cannot distort it, and they land where pixels like them would.
"""
from __future__ import annotations

import numpy as np
import torch


def sample_pixels(rep: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0,
                  num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded, class-balanced sample of labelled pixels.

    Args:
        rep: (N, D) representations of candidate pixels; labels: (N,) int64, 255 = ignore.
        n: pixels to draw in total (about n / #classes per class; a class with fewer
           pixels gives all of them).

    Returns ``(reps float32 (n', D), labels int64 (n',), indices int64 (n',))``; the same
    inputs and seed always give the same sample.
    """
    labels = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    classes = [c for c in np.unique(labels) if c != 255]
    if not classes:
        return np.zeros((0, rep.shape[1]), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    per = max(1, n // len(classes))
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=min(per, len(idx)), replace=False))
    idx = np.sort(np.concatenate(chosen))
    return rep[torch.from_numpy(idx)].float().cpu().numpy(), labels[idx], idx


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit L2 norm, as float64 (the losses compare directions)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def place(embedding, x: np.ndarray) -> np.ndarray:
    """Positions (N, 2) of rows ``x`` (N, D) in a fitted ``embedding`` (openTSNE ``transform``).

    Rows with a non-finite entry (an absent class's prototype) get NaN positions.
    """
    x = np.asarray(x, np.float64)
    out = np.full((len(x), 2), np.nan)
    ok = np.isfinite(x).all(1)
    if ok.any():
        out[ok] = np.asarray(embedding.transform(unit_rows(x[ok])))
    return out


def tsne_embed(reps: np.ndarray, prototypes: np.ndarray | None = None, seed: int = 0, n_iter: int = 500,
               perplexity: float = 30.0, n_jobs: int = 1):
    """2-D openTSNE embedding of ``reps`` (N, D) and, if given, of ``prototypes`` (K, D).

    Representations are L2-normalised first. ``n_iter`` is openTSNE's number of optimisation
    steps after early exaggeration (which runs min(250, n_iter) steps; openTSNE's defaults are
    250 + 500); the perplexity is capped at (N - 1) / 3 for small samples.
    Returns ``(embedding (N, 2), prototype positions (K, 2) with NaN rows for non-finite
    prototypes, or None, the TSNEEmbedding for ``place``)``.
    """
    from openTSNE import TSNE

    perplexity = min(perplexity, max(2.0, (len(reps) - 1) / 3))
    emb = TSNE(n_components=2, perplexity=perplexity, metric="euclidean", random_state=seed, n_jobs=n_jobs,
               n_iter=n_iter, early_exaggeration_iter=min(250, n_iter), verbose=False).fit(unit_rows(reps))
    protos = None if prototypes is None else place(emb, prototypes)
    return np.asarray(emb), protos, emb
