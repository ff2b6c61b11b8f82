"""An ipywidgets explorer of latent-space snapshots (notebook 06).

The widget callbacks are plain functions (``load_explorer_runs``, ``render_view``) so that
tests and headless papermill runs draw exactly what the interactive widgets draw.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import ERROR_COLOUR, class_colours, scatter_with_prototypes
from .latent import embed_snapshots, sigma_sizes

COLOURINGS = ("true class", "prediction", "error", "sigma2")


def load_explorer_runs(run_dirs: list[str | Path], tsne_iters: int = 500) -> dict[str, dict]:
    """Snapshots and their t-SNE embeddings of several runs, keyed ``"<method> (<split>)"``.

    Each value holds ``info`` (method, dataset, split, seed, names), ``pixels``, ``snaps``
    and ``embedded`` (see ``s4kit.viz.latent.embed_snapshots``).
    """
    from ..engine.latent import run_info, run_label
    from ..engine.snapshots import load_snapshots

    runs = {}
    for rd in map(Path, run_dirs):
        info = run_info(rd)
        pixels, snaps = load_snapshots(rd)
        key = run_label(info)
        if key in runs:
            key = f"{key} seed {info['seed']}"
        runs[key] = {"info": info, "pixels": pixels, "snaps": snaps,
                     "embedded": embed_snapshots(snaps, seed=info["seed"], n_iter=tsne_iters)}
    return runs


def view_data(run: dict, classes: list[int] | None, snapshot: int, colouring: str) -> dict:
    """What one view shows: points (M, 2), colours (M, 3), sizes (M,), prototypes (K, 2).

    Args:
        run: one value of ``load_explorer_runs``.
        classes: true classes to show (None: all).
        snapshot: index into the run's snapshots (0 = first, -1 = last).
        colouring: one of ``COLOURINGS``; ``sigma2`` needs a PRCL run (else ValueError).
    """
    if colouring not in COLOURINGS:
        raise ValueError(f"colouring {colouring!r}: expected one of {COLOURINGS}")
    labels = run["pixels"]["label"].astype(np.int64)
    it, pts, protos = run["embedded"][snapshot]
    snap = run["snaps"][snapshot][1]
    keep = np.ones(len(labels), bool) if classes is None else np.isin(labels, classes)
    names = run["info"]["names"]
    pal = class_colours(run["info"]["dataset"], len(names))
    pred = snap["pred"].astype(np.int64)
    sizes = np.full(len(labels), 6.0)
    if colouring == "true class":
        colours = pal[labels]
    elif colouring == "prediction":
        colours = pal[pred]
    elif colouring == "error":
        colours = np.where((pred != labels)[:, None], [ERROR_COLOUR], [[0.75, 0.75, 0.75]])
    else:
        s = sigma_sizes(snap)
        if s is None:
            raise ValueError("colouring 'sigma2' needs a run whose method stores sigma^2 (prcl)")
        sigma = snap[next(k for k in snap if k.startswith("extra_sigma"))].astype(np.float64)
        import matplotlib

        cmap = matplotlib.colormaps["viridis"]
        colours = cmap((sigma - sigma.min()) / max(sigma.max() - sigma.min(), 1e-12))[:, :3]
        sizes = s
    shown = protos.copy()
    if classes is not None:
        shown[~np.isin(np.arange(len(protos)), classes)] = np.nan
    return {"iteration": it, "points": pts[keep], "labels": labels[keep], "colours": colours[keep],
            "sizes": sizes[keep], "prototypes": shown}


def render_view(runs: dict, method: str, classes: list[int] | None = None, snapshot: int = -1,
                colouring: str = "true class", ax=None):
    """Draw one view (the widget callback); returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if method not in runs:
        raise KeyError(f"no run {method!r}; runs: {sorted(runs)}")
    v = view_data(runs[method], classes, snapshot, colouring)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    info = runs[method]["info"]
    scatter_with_prototypes(ax, v["points"], v["labels"], info["names"], info["dataset"], v["prototypes"],
                            sizes=v["sizes"], colours=v["colours"])
    ax.set_title(f"{method} | iteration {v['iteration']} | {colouring}", fontsize=9)
    return ax


def explorer(runs: dict):
    """The interactive widget: method, classes, snapshot slider, colouring."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    first = next(iter(runs.values()))
    names = first["info"]["names"]
    method = w.Dropdown(options=list(runs), description="method")
    classes = w.SelectMultiple(options=[(n, k) for k, n in enumerate(names)], value=tuple(range(len(names))),
                               description="classes", rows=min(len(names), 8))
    snap = w.IntSlider(min=0, max=len(first["snaps"]) - 1, value=len(first["snaps"]) - 1, description="snapshot")
    colouring = w.Dropdown(options=list(COLOURINGS), description="colour")
    out = w.Output()

    def update(*_):
        snap.max = len(runs[method.value]["snaps"]) - 1
        with out:
            out.clear_output(wait=True)
            try:
                render_view(runs, method.value, list(classes.value), snap.value, colouring.value)
                plt.show()
            except ValueError as exc:
                print(exc)

    for widget in (method, classes, snap, colouring):
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([method, colouring]), w.HBox([classes, snap]), out]))
