"""``s4kit predict``: segment your own images with a trained run (README "Segment your own images").

For every image (files, and folders searched recursively for .png .jpg .jpeg .bmp .webp)
``predict_run`` writes into the output folder, each file atomically (``io.atomic_path``):

* ``<name>_mask.png``: the predicted class per pixel, a palette PNG (mode P, the dataset's
  palette as the run's figures draw it), the image's size;
* ``<name>_overlay.png``: the image with the class colours blended over it (alpha 0.5);
* ``<name>_uncertainty.png``: the softmax entropy divided by log K (0: certain, 1: uniform),
  drawn with matplotlib's ``magma`` colour map (value v -> LUT entry round(255 v));
* ``<name>_sigma2.png`` (PRCL only): the mean over dimensions of the representation variance
  sigma^2, divided by its maximum over the image, drawn with ``viridis``.

The prediction is the kit's evaluation path: the run's eval transform (``data.mean/std``), its
``data.resize`` if any (the probabilities are then resized back, bilinear), the method's
``predict`` (the EMA teacher where the run evaluates with it, ``eval.model``), and the sliding
window of ``engine.evaluate`` (``eval.window`` or ``data.crop_size``, ``eval.stride``); an image
no larger than the window is one forward pass. ``<name>`` is the file's stem; stems shared by
two inputs get their path relative to the inputs' common folder (``a/x.png`` and ``b/x.png``
-> ``a__x_png``, ``b__x_png``).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError
from ..data.datasets import DataError, read_image, resize_pair
from ..data.folder import IMAGE_SUFFIXES
from ..io import atomic_path
from .evaluate import sliding_window_logits, sliding_window_mean

MODES = ("sliding", "full")


def collect_images(inputs: list[str | Path], skip: str | Path | None = None) -> list[tuple[Path, str]]:
    """The images to segment and the name each one's outputs take, in argument order.

    A file argument is taken whatever its suffix (it may still prove unreadable); a folder
    argument gives every file below it with an image suffix (case-insensitive), hidden files
    and anything under ``skip`` (the output folder) left out, in name order. A file reached
    twice is taken once.

    Returns ``[(path, name)]``: ``name`` is the stem, or, for stems that clash (case-insensitive),
    the path relative to the clashing files' common folder, ``/`` as ``__`` and the suffix's dot
    as ``_``.

    Raises:
        ConfigError (one line): an argument that does not exist, no image at all, or two
            inputs whose names still clash after that (both named).
    """
    skip_dir = Path(skip).resolve() if skip is not None else None
    found: list[Path] = []
    seen: set[Path] = set()
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            below = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                           and not q.name.startswith("."))
            below = [q for q in below if skip_dir is None or skip_dir not in q.resolve().parents]
            if not below:
                print(f"s4kit: warning: {p}: no image ({', '.join(IMAGE_SUFFIXES)}) in this folder", file=sys.stderr)
        elif p.exists():
            below = [p]
        else:
            raise ConfigError(f"{p}: no such file or folder")
        for q in below:
            key = q.resolve()
            if key not in seen:
                seen.add(key)
                found.append(q)
    if not found:
        raise ConfigError(f"no image to segment in {', '.join(map(str, inputs))}")
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(found):
        groups.setdefault(q.stem.lower(), []).append(i)
    names = [q.stem for q in found]
    for members in groups.values():
        if len(members) > 1:
            paths = [found[i].resolve() for i in members]
            common = Path(*_common_parts([p.parent.parts for p in paths]))
            for i, p in zip(members, paths):
                rel = p.relative_to(common)
                names[i] = "__".join([*rel.parent.parts, rel.stem + "_" + rel.suffix.lstrip(".")])
    taken: dict[str, Path] = {}
    for q, name in zip(found, names):
        if name.lower() in taken:
            raise ConfigError(f"{q} and {taken[name.lower()]} would both write {name}_mask.png; rename one or "
                              "segment them in two commands")
        taken[name.lower()] = q
    return list(zip(found, names))


def _common_parts(parts: list[tuple[str, ...]]) -> tuple[str, ...]:
    out = []
    for column in zip(*parts):
        if any(c != column[0] for c in column):
            break
        out.append(column[0])
    return tuple(out)


@torch.no_grad()
def has_sigma2(method, image: torch.Tensor) -> bool:
    """Whether ``method``'s evaluation outputs carry a per-pixel variance (PRCL's sigma^2 head),
    from one forward pass on ``image`` float (1, 3, h, w)."""
    return "sigma2" in method.snapshot_extras(method.forward_eval(image))


@torch.no_grad()
def predict_image(method, cfg, image: np.ndarray, device: torch.device, mode: str = "sliding",
                  with_sigma2: bool | None = None) -> dict:
    """Segment one image with a run's method, along the kit's evaluation path (module doc).

    Args:
        method: a built ``Method`` with its weights, in eval mode, on ``device``.
        cfg: the run's resolved config (``data.mean/std/resize/crop_size/num_classes``, ``eval.window/stride``).
        image: uint8 (H, W, 3) RGB.
        mode: ``sliding`` (windows of ``eval.window`` or ``data.crop_size``; one pass when the
            image fits) or ``full`` (one pass over the whole image).
        with_sigma2: also average PRCL's sigma^2 over the windows; ``None``: when ``has_sigma2``.

    Returns a dict of CPU tensors at the image's size: ``probs`` float32 (K, H, W) (mean
    softmax over the windows; sums to 1 per pixel), ``mask`` int64 (H, W) in ``0..K-1`` (its
    argmax), ``uncertainty`` float32 (H, W) in [0, 1] (entropy / log K), and, when the method
    has a sigma^2 head (PRCL), ``sigma2`` float32 (H, W) >= 0 (mean over dimensions).

    Raises ``ValueError`` for an unknown ``mode``.
    """
    from ..data.loaders import eval_transform

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    h, w = image.shape[:2]
    if cfg.data.resize is not None:
        image, _ = resize_pair(image, None, tuple(cfg.data.resize))
    x = eval_transform(cfg)(image, None)[0].unsqueeze(0).to(device)
    k = cfg.data.num_classes
    window = cfg.eval.window or cfg.data.crop_size
    if mode == "full":
        window = max(x.shape[-2:])
    stride = cfg.eval.stride or max(1, (2 * window) // 3)
    summed = sliding_window_logits(method.predict, x, window, stride, k)
    probs = summed / summed.sum(1, keepdim=True)
    sigma2 = None
    if with_sigma2 is None:
        with_sigma2 = has_sigma2(method, x[..., :window, :window])
    if with_sigma2:
        def mean_sigma2(crop):
            s2 = method.snapshot_extras(method.forward_eval(crop))["sigma2"].unsqueeze(1)  # (1, 1, h', w')
            return method.upsample_logits(s2.float(), crop.shape[-2:])  # resized as the method resizes logits

        sigma2 = sliding_window_mean(mean_sigma2, x, window, stride, 1)
    if probs.shape[-2:] != (h, w):  # data.resize: back to the image's own size
        probs = torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        if sigma2 is not None:
            sigma2 = torch.nn.functional.interpolate(sigma2, size=(h, w), mode="bilinear", align_corners=False)
    probs = probs[0].float().cpu()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(0)
    out = {"probs": probs, "mask": probs.argmax(0), "uncertainty": (entropy / math.log(k)).clamp(0, 1)}
    if sigma2 is not None:
        out["sigma2"] = sigma2[0, 0].float().cpu().clamp_min(0)
    return out


def colour_lut(name: str) -> np.ndarray:
    """uint8 (256, 3): matplotlib colour map ``name`` sampled at 256 points (v -> row round(255 v))."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _save_png(img: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def write_outputs(out_dir: Path, name: str, image: np.ndarray, result: dict, palette: np.ndarray) -> list[Path]:
    """Write the PNGs of one image (module doc) and return their paths.

    Args:
        image: uint8 (H, W, 3); result: ``predict_image``'s dict; palette: uint8 (256, 3)
            (``data.palette.palette_array``). Raises ``OSError`` (no space, permission).
    """
    mask = result["mask"].numpy().astype(np.uint8)
    m = Image.fromarray(mask, mode="P")
    m.putpalette(palette.reshape(-1).tolist())
    written = [_save_png(m, out_dir / f"{name}_mask.png")]
    overlay = (0.5 * image.astype(np.float32) + 0.5 * palette[mask].astype(np.float32)).round().astype(np.uint8)
    written.append(_save_png(Image.fromarray(overlay), out_dir / f"{name}_overlay.png"))
    u = (result["uncertainty"].numpy() * 255).round().astype(np.int64)
    written.append(_save_png(Image.fromarray(colour_lut("magma")[u]), out_dir / f"{name}_uncertainty.png"))
    if "sigma2" in result:
        s2 = result["sigma2"].numpy()
        s2 = s2 / s2.max() if s2.max() > 0 else s2
        v = (s2 * 255).round().astype(np.int64)
        written.append(_save_png(Image.fromarray(colour_lut("viridis")[v]), out_dir / f"{name}_sigma2.png"))
    return written


def predict_run(run_dir: str | Path, inputs: list[str | Path], out: str | Path, device: str = "auto",
                checkpoint: str = "last", mode: str = "sliding", progress: bool = True) -> dict:
    """Segment ``inputs`` with the run in ``run_dir`` and write the outputs into ``out``.

    The run's ``config.yaml`` and checkpoint are loaded with pretrained weights off (the
    checkpoint replaces every weight; nothing is downloaded). Unreadable images (not an image,
    truncated, too large) are reported on stderr by name as they come and skipped.

    Returns ``{"images": n, "written": [paths], "failed": [(path, message)]}``.

    Raises:
        ConfigError: ``run_dir`` is no run folder or lacks the checkpoint, ``out`` is a file,
            an input does not exist, no image was found, two inputs would write the same
            outputs, ``device=cuda`` without CUDA, or a bad ``checkpoint`` / ``mode``.
        CheckpointError: the checkpoint is corrupt or does not fit the run's method.
        OSError: an output cannot be written (permission, no space).
    """
    from tqdm.auto import tqdm

    from ..data.palette import palette_array
    from .runs import load_run_step

    if mode not in MODES:
        raise ConfigError(f"--mode {mode}: expected {' or '.join(MODES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; s4kit does not write over it")
    images = collect_images(inputs, skip=out)
    cfg, method, _ = load_run_step(run_dir, device=device, checkpoint=checkpoint)
    dev = next(method.parameters()).device
    palette = palette_array(cfg.data.dataset, cfg.data.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    size = cfg.data.crop_size
    with_sigma2 = has_sigma2(method, torch.zeros(1, 3, size, size, device=dev))
    bar = tqdm(images, desc="predict", unit="image", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for path, name in bar:
        try:
            image = read_image(path)
        except DataError as exc:
            failed.append((path, str(exc)))
            bar.write(f"s4kit: skipped: {exc}", file=sys.stderr)  # the message names the file
            continue
        written += write_outputs(out, name, image, predict_image(method, cfg, image, dev, mode, with_sigma2), palette)
    bar.close()
    return {"images": len(images), "written": written, "failed": failed}
