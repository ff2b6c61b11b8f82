"""Evaluation: dataset-level mIoU (full image or sliding window) and pseudo-label quality.

Source: docs/methods/substrate.md §8. The confusion matrix is summed over the whole val set
and all-reduced over ranks; each rank evaluates images ``rank, rank + W, ...`` so no image
is counted twice (the UniMatch DistributedSampler padding is not reproduced).
"""
from __future__ import annotations

import math
import warnings
import zlib
from typing import Callable

import torch

from .. import dist
from ..metrics import absent_classes, confusion_matrix, iou_from_confusion, miou, pixel_accuracy


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of sliding windows along one axis of ``size`` pixels: every ``stride``
    pixels, the last one moved back to touch the border; ``[0]`` when ``size <= window``."""
    if size <= window:
        return [0]
    s = list(range(0, size - window + 1, stride))
    if s[-1] != size - window:
        s.append(size - window)
    return s


def sliding_window_logits(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: int,
                          stride: int, num_classes: int) -> torch.Tensor:
    """Sum of softmax outputs over ``window`` x ``window`` crops (UniMatch ``sliding_window``).

    Windows start every ``stride`` pixels and the last one in each axis is moved back to
    touch the border (``window_starts``); an image smaller than the window is one window.
    Summing or averaging the softmax gives the same argmax (substrate §8.2).

    Args:
        predict: image (1, 3, h, w) -> logits (1, K, h, w).
        image: (1, 3, H, W). Returns summed probabilities (1, K, H, W).
    """
    _, _, H, W = image.shape
    out = torch.zeros(1, num_classes, H, W, device=image.device)
    for y in window_starts(H, window, stride):
        for x in window_starts(W, window, stride):
            crop = image[:, :, y : y + window, x : x + window]
            out[:, :, y : y + crop.shape[2], x : x + crop.shape[3]] += predict(crop).float().softmax(1)
    return out


def sliding_window_mean(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: int,
                        stride: int, channels: int) -> torch.Tensor:
    """Per-pixel mean of ``fn`` over the windows of ``sliding_window_logits`` (same starts).

    Args:
        fn: image (1, 3, h, w) -> float map (1, C, h, w) (e.g. PRCL's mean sigma^2, upsampled).
        image: float (1, 3, H, W). Returns float32 (1, C, H, W): each pixel's average over the
            windows covering it (every pixel is covered at least once).
    """
    _, _, H, W = image.shape
    total = torch.zeros(1, channels, H, W, device=image.device)
    count = torch.zeros(1, 1, H, W, device=image.device)
    for y in window_starts(H, window, stride):
        for x in window_starts(W, window, stride):
            crop = image[:, :, y : y + window, x : x + window]
            total[:, :, y : y + crop.shape[2], x : x + crop.shape[3]] += fn(crop).float()
            count[:, :, y : y + crop.shape[2], x : x + crop.shape[3]] += 1
    return total / count


def random_crop(image: torch.Tensor, target: torch.Tensor, size: int, seed: int = 0):
    """One seeded random ``size`` x ``size`` crop of image (1, 3, H, W) and mask (1, H, W),
    the evaluation of the CSS and PRCL official code (a VOC image <= 500 px inside a 512
    crop is whole, plus padding). Pads the image with 0 and the mask with 255 (ignore)
    where a side is shorter than ``size``. Returns ``(image, mask)`` of size x size."""
    h, w = image.shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        image = torch.nn.functional.pad(image, (0, pw, 0, ph), value=0.0)
        target = torch.nn.functional.pad(target, (0, pw, 0, ph), value=255)
    g = torch.Generator().manual_seed(seed)
    y = int(torch.randint(0, image.shape[-2] - size + 1, (), generator=g))
    x = int(torch.randint(0, image.shape[-1] - size + 1, (), generator=g))
    return image[..., y:y + size, x:x + size], target[..., y:y + size, x:x + size]


def _batches(dataset, indices, batch_size: int):
    """Group consecutive same-size samples into batches of at most ``batch_size``."""
    batch = []
    for i in indices:
        s = dataset[i]
        if batch and (len(batch) == batch_size or batch[0]["image"].shape != s["image"].shape):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def image_bar(total: int, desc: str, progress: bool):
    """A tqdm bar over ``total`` images (``update(n)`` per batch) that disappears when closed
    (``leave=False``: the stage line of ``stages.stage`` replaces it); silent unless ``progress``."""
    from .stages import progress_bar

    return progress_bar()(total=total, desc=desc, unit="img", disable=not progress, leave=False, mininterval=1.0,
                dynamic_ncols=True)


@torch.no_grad()
def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], dataset, num_classes: int, device,
             mode: str = "full", window: int = 0, stride: int = 0, batch_size: int = 16, max_images: int = 0,
             progress: bool = False) -> dict:
    """mIoU of ``predict`` on ``dataset`` (samples with ``image`` and ``mask``).

    Args:
        predict: image (B, 3, H, W) -> logits (B, K, H, W) at the input resolution.
        mode: ``full`` (whole image), ``sliding`` (``window``, ``stride``; stride 0
            means floor(2 * window / 3)) or ``crop`` (the CSS/PRCL official code: one random
            ``window`` x ``window`` crop per image, seeded by the image index, padded with 0
            (image) and 255 (mask) where the image is smaller).
        max_images: evaluate only the first N images (0: all).
        progress: a bar over this rank's images (``image_bar``).

    Returns ``{"miou", "pixel_acc", "per_class_iou" (list, percent), "confusion" (K, K)}``.
    Warns if some class is absent from both ground truth and prediction (its IoU is 0).
    """
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    indices = range(dist.rank(), n, dist.world_size())
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    stride = stride or max(1, (2 * window) // 3)
    bar = image_bar(len(indices), "eval", progress)
    for batch in _batches(dataset, indices, 1 if mode in ("sliding", "crop") else batch_size):
        bar.update(len(batch))
        image = torch.stack([s["image"] for s in batch]).to(device)
        target = torch.stack([s["mask"] for s in batch])
        if mode == "crop":
            image, target = random_crop(image, target, window, seed=zlib.crc32(str(batch[0]["id"]).encode()))
        if mode == "sliding":
            pred = sliding_window_logits(predict, image, window, stride, num_classes).argmax(1)
        else:
            pred = predict(image).argmax(1)
        cm += confusion_matrix(pred.cpu(), target, num_classes)
    bar.close()
    cm = dist.all_reduce_sum(cm.to(device)).cpu()
    absent = absent_classes(cm)
    if absent:
        warnings.warn(f"classes {absent} are absent from ground truth and prediction; their IoU counts as 0",
                      stacklevel=3)
    iou = iou_from_confusion(cm)
    return {"miou": miou(cm), "pixel_acc": pixel_accuracy(cm), "per_class_iou": [float(v * 100) for v in iou],
            "confusion": cm}


def sample_indices(n: int, max_images: int = 0, seed: int = 0) -> list[int]:
    """The images a measurement on at most ``max_images`` of ``n`` images uses: all of them
    (``range(n)``) when ``max_images`` is 0 or >= n, else a seeded random subset of
    ``max_images`` indices, in increasing order (the same for every call with the same
    ``n``, ``max_images``, ``seed``; a split list in some order, by source or by class,
    is then sampled fairly rather than by its head)."""
    if not max_images or max_images >= n:
        return list(range(n))
    import numpy as np

    return sorted(np.random.default_rng([seed, 18]).choice(n, max_images, replace=False).tolist())


def ratio_standard_error(numerators, denominators, population: int = 0) -> float:
    """Standard error of the ratio R = sum(y) / sum(x) of a simple random sample of images,
    y_i and x_i per image (e.g. correct-and-confident and confident pixels: R is the
    pseudo-label precision): the cluster (ratio-estimator, linearisation) standard error

        SE(R) = sqrt((1 - n / N) * sum_i (y_i - R x_i)^2 / (n - 1) / n) / mean(x)

    with ``population`` N (0: infinite, no finite-population correction; n >= N gives 0,
    the whole population measured). Pixels of one image are not independent; the image is
    the sampling unit. NaN when n < 2 or no x."""
    y = torch.as_tensor(numerators, dtype=torch.float64).flatten()
    x = torch.as_tensor(denominators, dtype=torch.float64).flatten()
    n = y.numel()
    if n < 2 or float(x.sum()) <= 0:
        return math.nan
    fpc = max(0.0, 1.0 - n / population) if population else 1.0
    r = y.sum() / x.sum()
    var = float(((y - r * x) ** 2).sum()) / (n - 1)
    return math.sqrt(fpc * var / n) / float(x.mean())


@torch.no_grad()
def pseudo_label_metrics(pseudo_label: Callable, dataset, device, threshold: float, batch_size: int = 32,
                         max_images: int = 0, progress: bool = False, seed: int = 0) -> dict:
    """Precision and coverage of pseudo-labels on unlabeled images with hidden ground truth.

    Args:
        pseudo_label: image (B, 3, H, W) -> (labels int64 (B, H, W), confidence (B, H, W)).
        dataset: unlabeled samples carrying ``hidden_mask``.
        threshold: the method's confidence threshold.
        max_images: measure on a seeded random sample of this many images
            (``sample_indices(len(dataset), max_images, seed)``); 0: every image.
        progress: a bar over this rank's images (``image_bar``).

    Returns ``{"pseudo_label_precision", "pseudo_label_coverage", "pseudo_label_accuracy"}``
    in percent (precision NaN if no pixel is confident), summed over ranks, with
    ``pseudo_label_images`` (the images measured) and ``pseudo_label_precision_se``: the
    sampling standard error of the precision in percentage points (``ratio_standard_error``
    over the images, finite-population corrected: 0 when every image is measured).
    """
    chosen = sample_indices(len(dataset), max_images, seed)
    per_image = []  # per image: valid, confident, correct&confident, correct
    indices = chosen[dist.rank()::dist.world_size()]
    bar = image_bar(len(indices), "pseudo-labels", progress)
    for batch in _batches(dataset, indices, batch_size):
        bar.update(len(batch))
        image = torch.stack([s["image"] for s in batch]).to(device)
        hidden = torch.stack([s["hidden_mask"] for s in batch]).to(device)
        labels, conf = pseudo_label(image)
        valid = hidden != 255
        confident = valid & (conf >= threshold)
        correct = labels == hidden
        per_image.append(torch.stack([valid.flatten(1).sum(1), confident.flatten(1).sum(1),
                                      (correct & confident).flatten(1).sum(1), (correct & valid).flatten(1).sum(1)],
                                     1).double().cpu())
    bar.close()
    counts = torch.cat(per_image) if per_image else torch.zeros(0, 4, dtype=torch.float64)
    counts = dist.all_gather_cat(counts.to(device)).cpu()
    valid, confident, cc, c = counts.sum(0).tolist()
    return {"pseudo_label_precision": 100 * cc / confident if confident else math.nan,
            "pseudo_label_coverage": 100 * confident / valid if valid else math.nan,
            "pseudo_label_accuracy": 100 * c / valid if valid else math.nan,
            "pseudo_label_images": int(counts.shape[0]),
            "pseudo_label_precision_se": 100 * ratio_standard_error(counts[:, 2], counts[:, 1], len(dataset))}
