"""Latent-space snapshots along training: a fixed, seeded sample of val pixels.

At ``viz.snapshots`` iterations spread from the first to the last, the trainer stores for
the same pixels (chosen once per run, class-balanced, from the first
``viz.snapshot_images`` val images at the head's stride-4 grid):

    snapshots/pixels.npz          image index, row, column, true label of every sampled pixel
    snapshots/iter_NNNNNN.npz     rep float16 (N, D), pred int16 (N,), conf float16 (N,),
                                  prototypes float16 (K, D) (NaN rows for absent classes),
                                  extra_<name> float16 (N,) per method extra (PRCL sigma^2, ...)

A few MB per run. ``s4kit viz`` and notebook 06 read them back (``load_snapshots``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..losses.contrast import class_means
from ..io import atomic_savez
from ..methods.base import downsample_labels
from ..viz.tsne import sample_pixels


def snapshot_iterations(total: int, n: int) -> list[int]:
    """``n`` iterations (1-based: after that many steps) evenly from 1 to ``total``, unique."""
    if n <= 0:
        return []
    if n == 1:
        return [total]
    return sorted({int(round(1 + i * (total - 1) / (n - 1))) for i in range(n)})


@torch.no_grad()
def forward_val_pixels(method, device, dataset, images) -> dict:
    """The one val-pixel forward of s4kit (run t-SNE, snapshots): every pixel of the head grid.

    Args:
        method: a ``Method`` (put in eval mode for the forward, train mode after).
        dataset: val dataset of ``{"image": float (3, H, W), "mask": int64 (H, W)}``.
        images: indices into ``dataset``.

    Returns lists with one entry per image: ``rep`` float (D, h, w) from
    ``method.representation_key``, ``pred`` int64 (h, w) and ``conf`` float (h, w) (argmax and
    max of the softmax of the logits resized to the head grid h x w), ``label`` int64 (h, w)
    (mask downsampled by majority vote, 255 = ignore), and ``extras`` {name: [(h, w), ...]}
    from ``method.snapshot_extras`` (PRCL's sigma^2). All on the CPU.
    """
    out_rep, out_pred, out_conf, out_label, extras = [], [], [], [], {}
    method.eval()
    try:
        for i in images:
            s = dataset[i]
            x = s["image"][None].to(device)
            out = method.forward_eval(x)
            rep = out[method.representation_key][0].float()
            size = rep.shape[-2:]
            prob = torch.nn.functional.interpolate(out["logits"].float(), size=tuple(size), mode="bilinear",
                                                   align_corners=True).softmax(1)[0]
            conf, pred = prob.max(0)
            out_rep.append(rep.cpu())
            out_pred.append(pred.cpu())
            out_conf.append(conf.cpu())
            out_label.append(downsample_labels(s["mask"][None], size)[0])
            for name, value in method.snapshot_extras(out).items():
                extras.setdefault(name, []).append(value[0].float().cpu())
    finally:
        method.train()
    return {"rep": out_rep, "pred": out_pred, "conf": out_conf, "label": out_label, "extras": extras}


def choose_pixels(cfg, method, device, dataset) -> dict:
    """The run's fixed pixel sample: class-balanced over true labels, seeded by ``train.seed``."""
    images = list(range(min(cfg.viz.snapshot_images, len(dataset))))
    fw = forward_val_pixels(method, device, dataset, images)
    coords, labels = [], []
    for k, lab in zip(images, fw["label"]):
        h, w = lab.shape
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords.append(torch.stack([torch.full_like(yy, k), yy, xx], -1).view(-1, 3))
        labels.append(lab.flatten())
    coords, labels = torch.cat(coords), torch.cat(labels)
    _, lab, idx = sample_pixels(coords.float(), labels, cfg.viz.snapshot_pixels, seed=cfg.train.seed)
    c = coords[torch.from_numpy(idx)].numpy()
    return {"image": c[:, 0].astype(np.int32), "row": c[:, 1].astype(np.int16), "col": c[:, 2].astype(np.int16),
            "label": lab.astype(np.int16)}


def take_snapshot(cfg, method, device, dataset, pixels: dict, path: Path) -> Path:
    """Write one ``iter_NNNNNN.npz`` for the sampled ``pixels``."""
    images = sorted(set(pixels["image"].tolist()))
    fw = forward_val_pixels(method, device, dataset, images)
    where = {k: j for j, k in enumerate(images)}
    j = np.array([where[k] for k in pixels["image"]])
    r, c = pixels["row"].astype(np.int64), pixels["col"].astype(np.int64)

    def gather(maps):
        """Per-image maps ([D,] h_i, w_i) (val images may differ in size) -> (N, [D]) in pixel order."""
        first = maps[0]
        out = torch.empty((len(j),) + tuple(first.shape[:-2]), dtype=first.dtype)
        for k, m in enumerate(maps):
            sel = torch.from_numpy(np.nonzero(j == k)[0])
            picked = m[..., torch.from_numpy(r[sel.numpy()]), torch.from_numpy(c[sel.numpy()])]  # ([D,] n)
            out[sel] = picked.T if m.dim() == 3 else picked
        return out.numpy()

    rep = gather(fw["rep"])
    protos = method.prototypes()
    if protos is None:
        labels = torch.from_numpy(pixels["label"].astype(np.int64))
        classes = torch.arange(cfg.data.num_classes)
        protos = class_means(torch.from_numpy(rep).float(), labels, classes)
        protos[~torch.isin(classes, labels)] = float("nan")
    data = {"rep": rep.astype(np.float16), "pred": gather(fw["pred"]).astype(np.int16),
            "conf": gather(fw["conf"]).astype(np.float16),
            "prototypes": protos.detach().float().cpu().numpy().astype(np.float16)}
    for name, maps in fw["extras"].items():
        data[f"extra_{name}"] = gather(maps).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(path, compressed=True, **data)
    return path


class Snapshotter:
    """Called by the trainer after every step; writes a snapshot at the scheduled iterations."""

    def __init__(self, cfg, method, device, run_dir: Path, dataset_fn):
        self.cfg, self.method, self.device = cfg, method, device
        self.dir = Path(run_dir) / "snapshots"
        self.at = set(snapshot_iterations(cfg.train.iters, cfg.viz.snapshots))
        self.dataset_fn, self._dataset, self._pixels = dataset_fn, None, None
        self.seconds = 0.0  # wall time spent on snapshots (restored on resume by the trainer)

    def __call__(self, step: int) -> None:
        """``step``: iterations done (1-based)."""
        if step not in self.at:
            return
        t0 = time.time()
        if self._dataset is None:
            self._dataset = self.dataset_fn()
            px = self.dir / "pixels.npz"
            if px.exists():  # a resumed run keeps its sample
                self._pixels = dict(np.load(px))
            else:
                self._pixels = choose_pixels(self.cfg, self.method, self.device, self._dataset)
                self.dir.mkdir(parents=True, exist_ok=True)
                atomic_savez(px, **self._pixels)
        take_snapshot(self.cfg, self.method, self.device, self._dataset, self._pixels,
                      self.dir / f"iter_{step:06d}.npz")
        self.seconds += time.time() - t0


def load_snapshots(run_dir: str | Path) -> tuple[dict, list[tuple[int, dict]]]:
    """``(pixels, [(iteration, snapshot), ...])`` of a run, sorted by iteration.

    Raises ``FileNotFoundError`` naming the folder if the run has no snapshots.
    """
    d = Path(run_dir) / "snapshots"
    if not (d / "pixels.npz").exists():
        raise FileNotFoundError(f"{d}: no snapshots (train with viz.snapshots > 0)")
    pixels = dict(np.load(d / "pixels.npz"))
    snaps = [(int(p.stem.split("_")[1]), dict(np.load(p))) for p in sorted(d.glob("iter_*.npz"))]
    return pixels, snaps
