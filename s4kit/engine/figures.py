"""The figures every run leaves in ``RUN_DIR/figures``.

* ``predictions.png``: val images, ground truth, prediction, errors, a class legend;
* ``per_class_iou.png``: per-class IoU bars with the mIoU;
* ``tsne.png``: openTSNE of val-pixel representations (the representation head where a
  loss trains it, else the decoder feature) coloured by true class, wrong
  predictions ringed red, a class legend, class prototypes as stars (the method's own prototypes where it
  keeps some, else the class means of the val representations), placed by ``transform``;
* ``losses.png`` and, with hidden ground truth, ``pseudo_labels.png`` from ``log.csv``, plus
  ``label_sources.png`` (precision and coverage per label source) when the method logs several (css).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.loaders import build_dataset
from ..losses.contrast import class_means
from ..viz import figures as F
from ..viz.tsne import sample_pixels, tsne_embed
from .logger import read_log
from .snapshots import forward_val_pixels


def collect_val_pixels(cfg, method, device, max_images: int = 256) -> dict:
    """Representations (N, D), labels (N,) and predictions (N,) of every head-grid pixel of
    the first ``max_images`` val images (``snapshots.forward_val_pixels``, flattened)."""
    val = build_dataset(cfg, "val", train=False)
    fw = forward_val_pixels(method, device, val, range(min(len(val), max_images)))
    return {"rep": torch.cat([r.flatten(1).T for r in fw["rep"]]),
            "label": torch.cat([y.flatten() for y in fw["label"]]),
            "pred": torch.cat([p.flatten() for p in fw["pred"]])}


def tsne_figure(cfg, method, device, path: Path, names: list[str], title: str) -> Path:
    """Sample pixels, embed them with openTSNE, place the prototypes, draw the scatter."""
    px = collect_val_pixels(cfg, method, device)
    reps, labels, idx = sample_pixels(px["rep"], px["label"], cfg.viz.tsne_pixels, seed=cfg.train.seed)
    protos = method.prototypes()
    if protos is None:
        valid = px["label"] != 255
        classes = torch.arange(cfg.data.num_classes)
        protos = class_means(px["rep"][valid], px["label"][valid], classes)
        present = torch.isin(classes, px["label"][valid])
        protos[~present] = float("nan")
    protos = protos.detach().float().cpu().numpy()
    keep = np.isfinite(protos).all(1)
    emb, proto_xy, _ = tsne_embed(reps, protos[keep], seed=cfg.train.seed, n_iter=cfg.viz.tsne_iters)
    placed = np.full((len(protos), 2), np.nan)
    placed[keep] = proto_xy
    wrong = px["pred"].numpy()[idx] != labels
    return F.tsne_scatter(path, emb, labels, names, cfg.data.dataset, placed, wrong, title)


def run_figures(cfg, method, device, run_dir: Path, result: dict, names: list[str]) -> list[Path]:
    """Write every figure of a finished run; returns their paths."""
    fig_dir = Path(run_dir) / "figures"
    title = f"{cfg.method.name} | {cfg.data.dataset} {cfg.data.split} | seed {cfg.train.seed}"
    out = []
    val = build_dataset(cfg, "val", train=False)
    samples = [val[i] for i in range(min(cfg.viz.overlays, len(val)))]
    method.eval()
    preds = [method.predict(s["image"][None].to(device)).argmax(1)[0].cpu().numpy() for s in samples]
    method.train()
    images = [F.denormalize(s["image"].numpy(), cfg.data.mean, cfg.data.std) for s in samples]
    out.append(F.overlays(fig_dir / "predictions.png", images, [s["mask"].numpy() for s in samples], preds,
                          cfg.data.dataset, cfg.data.num_classes, f"{title} | mIoU {result['miou']:.1f}", names))
    out.append(F.per_class_iou(fig_dir / "per_class_iou.png", names, result["per_class_iou"], title))
    out.append(tsne_figure(cfg, method, device, fig_dir / "tsne.png", names, f"t-SNE of val representations\n{title}"))
    rows = read_log(Path(run_dir) / "log.csv")
    loss_keys = sorted({k for r in rows for k in r if k.startswith("loss")})
    if rows:
        out.append(F.curves(fig_dir / "losses.png", rows, loss_keys, title, "loss"))
        pl_keys = sorted({k for r in rows for k in r if k.startswith("pl_precision") or k.startswith("pl_coverage")})
        if pl_keys:
            out.append(F.curves(fig_dir / "pseudo_labels.png", rows, pl_keys, title, "% of pixels"))
        if any(k.startswith("pl_coverage_") for k in pl_keys):  # several label sources (css)
            from ..viz.label_sources import label_source_figure

            out.append(label_source_figure(run_dir))
    return out
