"""An ipywidgets explorer of latent-space snapshots (notebook 06).

The widget callbacks are plain functions (``load_explorer_runs``, ``render_view``) so that
tests and headless papermill runs draw exactly what the interactive widgets draw;
``build_explorer`` makes the widgets without showing them (tests read their options).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import (ERROR_COLOUR, add_scatter_legends, class_colours, marker_key_handles,
                      scatter_with_prototypes, swatch)
from .latent import embed_snapshots, sigma_sizes

COLOURINGS = ("true class", "prediction", "error", "sigma2")
RIGHT_COLOUR = (0.75, 0.75, 0.75)  # "error" colouring: rightly predicted pixels


def has_sigma(run: dict) -> bool:
    """Whether every snapshot of ``run`` (a ``load_explorer_runs`` value) stores PRCL's sigma^2."""
    return all(any(k.startswith("extra_sigma") for k in snap) for _, snap in run["snaps"])


def colourings(run: dict) -> list[str]:
    """The colourings ``run`` can be drawn with: ``COLOURINGS`` without ``sigma2`` unless the
    run stores sigma^2 (a PRCL run)."""
    return [c for c in COLOURINGS if c != "sigma2" or has_sigma(run)]


def snapshot_options(run: dict) -> list[tuple[str, int]]:
    """``[("iteration 1", 0), ("iteration 400", 1), ...]``: the slider's labels (training
    iterations of the snapshots) and values (indices into ``run["snaps"]``)."""
    return [(f"iteration {it}", i) for i, (it, _) in enumerate(run["snaps"])]


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
    """What one view shows: points (M, 2), labels (M,), pred (M,), colours (M, 3), sizes (M,),
    prototypes (K, 2), the snapshot's training ``iteration`` and, for ``sigma2``, ``sigma``
    (min, max) of the colour scale.

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
    sigma_range = None
    if colouring == "true class":
        colours = pal[labels]
    elif colouring == "prediction":
        colours = pal[pred]
    elif colouring == "error":
        colours = np.where((pred != labels)[:, None], [ERROR_COLOUR], [RIGHT_COLOUR])
    else:
        s = sigma_sizes(snap)
        if s is None:
            raise ValueError("colouring 'sigma2' needs a run whose method stores sigma^2 (prcl)")
        sigma = snap[next(k for k in snap if k.startswith("extra_sigma"))].astype(np.float64)
        import matplotlib

        cmap = matplotlib.colormaps["viridis"]
        colours = cmap((sigma - sigma.min()) / max(sigma.max() - sigma.min(), 1e-12))[:, :3]
        sizes = s
        sigma_range = (float(sigma.min()), float(sigma.max()))
    shown = protos.copy()
    if classes is not None:
        shown[~np.isin(np.arange(len(protos)), classes)] = np.nan
    return {"iteration": it, "points": pts[keep], "labels": labels[keep], "pred": pred[keep],
            "colours": colours[keep], "sizes": sizes[keep], "prototypes": shown, "sigma": sigma_range}


def render_view(runs: dict, method: str, classes: list[int] | None = None, snapshot: int = -1,
                colouring: str = "true class", ax=None, legend: bool = True):
    """Draw one view (the widget callback); returns the matplotlib Axes.

    With ``legend``, right of the axes: what the colours mean (the true or predicted classes
    shown, named; wrong / right; a sigma^2 colour bar) and the prototype star. Raises KeyError
    for an unknown ``method`` and ValueError as ``view_data``.
    """
    import matplotlib.pyplot as plt

    if method not in runs:
        raise KeyError(f"no run {method!r}; runs: {sorted(runs)}")
    v = view_data(runs[method], classes, snapshot, colouring)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    info = runs[method]["info"]
    names, dataset = info["names"], info["dataset"]
    scatter_with_prototypes(ax, v["points"], v["labels"], names, dataset, v["prototypes"],
                            sizes=v["sizes"], colours=v["colours"])
    ax.set_title(f"{method} | iteration {v['iteration']} | {colouring}", fontsize=9)
    if legend:
        key = marker_key_handles(bool(np.isfinite(v["prototypes"]).any()), False)
        if colouring in ("true class", "prediction"):
            shown = np.unique(v["labels"] if colouring == "true class" else v["pred"])
            shown = shown[(shown >= 0) & (shown < len(names))]
            add_scatter_legends(ax, names, dataset, shown, key=key,
                                title="true class" if colouring == "true class" else "predicted class")
        elif colouring == "error":
            key = [swatch(ERROR_COLOUR, "wrongly predicted"), swatch(RIGHT_COLOUR, "right")] + key
            add_scatter_legends(ax, names, dataset, [], key=key)
        else:
            import matplotlib

            sm = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(*v["sigma"]), "viridis")
            ax.figure.colorbar(sm, ax=ax, shrink=0.6, label="σ² (colour and marker size)")
            add_scatter_legends(ax, names, dataset, [], key=key)
    return ax


def build_explorer(runs: dict) -> dict:
    """The explorer's widgets, wired but not shown: ``{"method", "classes", "snapshot",
    "colouring", "out", "box", "update"}``.

    ``snapshot`` is a SelectionSlider labelled by training iteration (``snapshot_options``);
    ``colouring`` offers ``sigma2`` only for runs that store it (``colourings``); both follow
    the chosen method. ``update()`` redraws into ``out``.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    first = next(iter(runs.values()))
    names = first["info"]["names"]
    method = w.Dropdown(options=list(runs), description="method")
    classes = w.SelectMultiple(options=[(n, k) for k, n in enumerate(names)], value=tuple(range(len(names))),
                               description="classes", rows=min(len(names), 8))
    opts = snapshot_options(first)
    snap = w.SelectionSlider(options=opts, value=opts[-1][1], description="training",
                             layout=w.Layout(width="22em"), style={"description_width": "initial"})
    colouring = w.Dropdown(options=colourings(first), description="colour")
    out = w.Output()
    busy = []  # set while the method's options are swapped, so that the swap draws once

    def update(*_):
        if busy:
            return
        with out:
            out.clear_output(wait=True)
            try:
                render_view(runs, method.value, list(classes.value), snap.value, colouring.value)
                plt.show()
            except ValueError as exc:
                print(exc)

    def method_changed(*_):
        run = runs[method.value]
        busy.append(1)
        try:
            at = snap.label.split()[-1] if snap.label else None
            opts = snapshot_options(run)
            same = [i for label, i in opts if label.split()[-1] == at]
            snap.options = opts
            snap.value = same[0] if same else opts[-1][1]
            keep = colouring.value
            colouring.options = colourings(run)
            colouring.value = keep if keep in colouring.options else "true class"
        finally:
            busy.clear()
        update()

    method.observe(method_changed, names="value")
    for widget in (classes, snap, colouring):
        widget.observe(update, names="value")
    update()
    box = w.VBox([w.HBox([method, colouring]), w.HBox([classes, snap]), out])
    return {"method": method, "classes": classes, "snapshot": snap, "colouring": colouring, "out": out,
            "box": box, "update": update}


def explorer(runs: dict):
    """The interactive widget: method, classes, a snapshot slider labelled by training
    iteration, colouring (sigma^2 only for PRCL runs); see ``build_explorer``."""
    from IPython.display import display

    display(build_explorer(runs)["box"])
