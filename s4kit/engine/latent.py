"""``s4kit viz RUN_DIR [RUN_DIR ...]``: latent-space figures and measures from snapshots alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..data.datasets import CLASS_NAMES
from ..io import atomic_write_text, json_dumps
from ..viz.latent import comparison_figure, embed_snapshots, evolution_figure, latent_measures, sigma_sizes
from .snapshots import load_snapshots


def run_info(run_dir: Path) -> dict:
    """Method, dataset, split, seed and class names of a run folder (from its config.yaml)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    from ..config import from_yaml

    cfg = from_yaml(path)  # ConfigError (one line) if unreadable
    k = int(cfg.data.num_classes)
    names = list(CLASS_NAMES.get(cfg.data.dataset, ()))
    return {"method": cfg.method.name, "dataset": cfg.data.dataset, "split": str(cfg.data.split),
            "seed": int(cfg.train.seed), "names": names if len(names) == k else [str(i) for i in range(k)],
            "model": cfg.model.name}


def run_label(info: dict) -> str:
    """``method`` plus the network when it is not DeepLabV3+ and not in the name, and the split:
    ``"supervised (segformer, 1_16)"``, ``"reco (1_16)"``."""
    model = info.get("model", "deeplabv3plus")
    extra = f"{model}, " if model != "deeplabv3plus" and model not in info["method"] else ""
    return f"{info['method']} ({extra}{info['split']})"


def final_measures(run_dir: Path, seed: int = 0) -> dict:
    """Silhouette, k-NN accuracy and prototype distance of a run's last snapshot."""
    pixels, snaps = load_snapshots(run_dir)
    return latent_measures(snaps[-1][1], pixels["label"], seed=seed)


def comparison_path(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Where ``viz_runs`` draws the side-by-side figure: ``out``, else
    ``<parent of the first run>/latent_space.png``."""
    return Path(out) if out else Path(run_dirs[0]).parent / "latent_space.png"


def viz_runs(run_dirs: list[str | Path], out: str | Path | None = None, tsne_iters: int = 500) -> dict:
    """Write ``figures/tsne_evolution.png`` in every run, a side-by-side figure of the final
    embeddings (``out``, default ``<parent of the first run>/latent_space.png``), and the
    measures into each run's ``metrics.json``. Returns ``{run_dir: measures}``.

    Raises ``ConfigError`` for a folder that is not a run, ``FileNotFoundError`` for a run
    without snapshots.
    """
    panels, results, dataset, names = [], {}, None, None
    for rd in map(Path, run_dirs):
        info = run_info(rd)
        try:
            pixels, snaps = load_snapshots(rd)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from exc
        labels = pixels["label"].astype(np.int64)
        embedded = embed_snapshots(snaps, seed=info["seed"], n_iter=tsne_iters)
        title = f"{run_label(info)} | {info['dataset']} | seed {info['seed']}"
        evolution_figure(rd / "figures" / "tsne_evolution.png", embedded, labels, snaps, info["names"],
                         info["dataset"], title)
        measures = latent_measures(snaps[-1][1], labels, seed=info["seed"])
        results[str(rd)] = measures
        mpath = rd / "metrics.json"
        if mpath.exists():
            try:
                m = json.loads(mpath.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, ValueError):
                m = None
            if not isinstance(m, dict):
                raise ConfigError(f"{mpath}: not a JSON object (an edited file?); restore or delete it")
            m.update(measures)
            atomic_write_text(mpath, json_dumps(m))
        _, pts, protos = embedded[-1]
        panels.append({"title": f"{run_label(info)}\nsil {measures['silhouette']:.2f} | "
                                f"kNN {measures['knn_accuracy']:.1f}%",
                       "points": pts, "prototypes": protos, "labels": labels, "pred": snaps[-1][1]["pred"],
                       "sizes": sigma_sizes(snaps[-1][1])})
        dataset, names = info["dataset"], info["names"]
    if panels:
        comparison_figure(comparison_path(run_dirs, out), panels, names, dataset)
    return results
