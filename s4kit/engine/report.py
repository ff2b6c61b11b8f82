"""``s4kit report RUNS_DIR``: one table row per (dataset, method, split) over seeds."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..config import ConfigError

METHOD_ORDER = ["supervised", "meanteacher", "reco", "css", "prcl", "supervised_maskformer", "rc2l", "allspark"]
MODEL_ORDER = ["", "maskformer", "segformer"]  # DeepLabV3+ methods first, then each head with its baseline


REQUIRED = ("method", "dataset", "split", "miou")


def collect_metrics(runs_dir: str | Path, skipped: list[str] | None = None) -> list[dict]:
    """Every readable ``metrics.json`` below ``runs_dir`` (with its folder as ``run_dir``).

    A file that is empty, not JSON, or lacks one of ``REQUIRED`` is left out and, when
    ``skipped`` is a list, appended to it as ``"<path> (<reason>)"``: one broken run never
    hides the others. Raises ``ConfigError`` if ``runs_dir`` is not a folder.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no such folder")
    out = []
    for p in sorted(runs_dir.rglob("metrics.json")):
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(m, dict):
                raise ValueError(f"a JSON {type(m).__name__}, not an object")
            missing = [k for k in REQUIRED if k not in m]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except (OSError, ValueError) as exc:
            if skipped is not None:
                skipped.append(f"{p} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        m["run_dir"] = str(p.parent)
        out.append(m)
    return out


def _mean_std(values: list[float], digits: int = 1) -> str:
    """``mean ± sample std`` (or the single value) of the non-missing values, else a dash."""
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}"


def summarize(metrics: list[dict]) -> list[dict]:
    """Group runs by (dataset, method, model, split); mean ± sample std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for m in metrics:
        key = (m["dataset"], m["method"], m.get("model", ""), m["split"])
        groups.setdefault(key, []).append(m)

    def order(key):
        d, meth, model, split = key
        return (d, split, MODEL_ORDER.index(model) if model in MODEL_ORDER else 99,
                METHOD_ORDER.index(meth) if meth in METHOD_ORDER else 99, meth, model)

    rows = []
    for key in sorted(groups, key=order):
        ms = groups[key]
        label = key[1] + (f" ({key[2]})" if key[2] and key[2] not in key[1] else "")
        rows.append({"dataset": key[0], "method": label, "split": key[3],
                     "n_labeled": ms[0].get("n_labeled", ""), "seeds": len(ms),
                     "miou": _mean_std([m["miou"] for m in ms]),
                     "pl_precision": _mean_std([m.get("pseudo_label_precision") for m in ms]),
                     "pl_coverage": _mean_std([m.get("pseudo_label_coverage") for m in ms]),
                     "silhouette": _mean_std([m.get("silhouette") for m in ms], 2),
                     "knn_accuracy": _mean_std([m.get("knn_accuracy") for m in ms]),
                     "iters": ms[0].get("iters", ""),
                     "minutes": f"{np.mean([m.get('train_seconds', 0) for m in ms]) / 60:.1f}"})
    return rows


COLUMNS = [("dataset", "dataset"), ("method", "method"), ("split", "split"), ("n_labeled", "labeled"),
           ("seeds", "seeds"), ("miou", "mIoU (%)"), ("pl_precision", "PL precision (%)"),
           ("pl_coverage", "PL coverage (%)"), ("silhouette", "silhouette"), ("knn_accuracy", "kNN acc (%)"),
           ("iters", "iters"), ("minutes", "train min")]


def report_table(runs_dir: str | Path, csv: bool = False, skipped: list[str] | None = None) -> str:
    """Markdown (or CSV) table of every run below ``runs_dir``; unreadable metrics files go to
    ``skipped`` (see ``collect_metrics``). Raises ``ConfigError`` if no run is readable."""
    skipped = [] if skipped is None else skipped
    rows = summarize(collect_metrics(runs_dir, skipped))
    if not rows:
        raise ConfigError(f"{runs_dir}: no readable metrics.json below this folder ({len(skipped)} unreadable, "
                          f"e.g. {skipped[0]})" if skipped else f"{runs_dir}: no metrics.json below this folder")
    if csv:
        lines = [",".join(k for k, _ in COLUMNS)] + [",".join(str(r[k]) for k, _ in COLUMNS) for r in rows]
        return "\n".join(lines)
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(str(r[k]) for k, _ in COLUMNS) + " |" for r in rows])
