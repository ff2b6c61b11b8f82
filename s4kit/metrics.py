"""Metrics as pure tensor functions: confusion matrix, dataset-level mIoU, pseudo-label quality.

Source: docs/methods/substrate.md §8.1. The mIoU is computed from one K x K confusion matrix
accumulated over the *whole* validation set (never the mean of per-image mIoUs):

    IoU_k = TP_k / (TP_k + FP_k + FN_k),     mIoU = (1/K) sum_k IoU_k                 (S12)

Pixels whose ground truth is 255 never count. A class that is never present and never
predicted has IoU 0 (UniMatch/AllSpark convention) and is reported by ``absent_classes``.
"""
from __future__ import annotations

import torch

from .labels import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (K, K) counts, rows = ground truth, columns = prediction.

    ``pred`` and ``target`` are int64 of the same shape; target 255 (and any value outside
    0..K-1) is ignored. Raises ``ValueError`` on a shape mismatch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    keep = (target >= 0) & (target < num_classes)
    idx = target[keep].long() * num_classes + pred[keep].long().clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (K,) float64 in [0, 1] from a (K, K) confusion matrix; 0 where the union is 0."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.zeros_like(tp))


def absent_classes(cm: torch.Tensor) -> list[int]:
    """Classes never present in the ground truth and never predicted (their IoU is 0 by convention)."""
    union = cm.sum(0) + cm.sum(1) - cm.diag()
    return [int(k) for k in torch.nonzero(union == 0).flatten()]


def miou(cm: torch.Tensor) -> float:
    """Mean IoU in percent (0-100) over all K classes (S12)."""
    return float(iou_from_confusion(cm).mean() * 100)


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct / counted pixels, in percent."""
    return float(cm.diag().sum() / cm.sum().clamp(min=1) * 100)


def pseudo_label_quality(pseudo: torch.Tensor, confidence: torch.Tensor, hidden: torch.Tensor,
                         threshold: float) -> dict[str, float]:
    """Quality of pseudo-labels against hidden ground truth (digits), in percent.

    Args:
        pseudo: int64 (B, H, W) pseudo-labels; confidence: float (B, H, W) in [0, 1];
        hidden: int64 (B, H, W) hidden ground truth with 255 = ignore; threshold: the
        method's confidence threshold.

    Returns:
        ``precision``: accuracy over valid pixels with confidence >= threshold (NaN if none);
        ``coverage``: share of valid pixels with confidence >= threshold;
        ``accuracy``: accuracy over all valid pixels, thresholded or not.
    """
    valid = hidden != IGNORE_INDEX
    confident = valid & (confidence >= threshold)
    correct = pseudo == hidden
    n_valid, n_conf = valid.sum().item(), confident.sum().item()
    return {
        "precision": 100.0 * (correct & confident).sum().item() / n_conf if n_conf else float("nan"),
        "coverage": 100.0 * n_conf / n_valid if n_valid else float("nan"),
        "accuracy": 100.0 * (correct & valid).sum().item() / n_valid if n_valid else float("nan"),
    }
