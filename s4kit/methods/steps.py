"""The pieces every semi-supervised iteration is built from, so each method's ``train_step``
reads top to bottom like its paper's method section.

* ``teacher_pseudo_labels``: the EMA teacher on the weak unlabeled view, pseudo-labels
  y^ = argmax and confidences q = max softmax at the crop, crop padding cleared;
* ``pseudo_label_logs``: precision / coverage / accuracy of pseudo-labels against the
  hidden ground truth (digits), for ``log.csv`` only, never for a loss;
* ``strong_mixed_view``: CutMix / ClassMix of the weak view and its maps (S2), then the
  photometric strong augmentation of the mixed images;
* ``unsupervised_ce``: L_u on the strong view (S4: ReCo's per-image weight, or UniMatch's
  per-pixel mask);
* ``contrast_targets``: labels and validity of the labeled + unlabeled pixels on the head
  grid for a pixel contrast (ground truth; pseudo-labels with q >= delta_w);
* ``mean_teacher_step``: the first three together, the mean teacher's iteration (S1-S4)
  on which ReCo and PRCL add their contrast.

The loss-weight schedules (ramps, in iterations) are in ``s4kit.losses.ramps``.

Substrate equations (S1-S11) are on the substrate page of the method notes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.mixing import mix_batch
from ..losses.ce import unsupervised_masked_ce, unsupervised_weighted_ce
from ..metrics import pseudo_label_quality
from .base import IGNORE_INDEX, downsample_labels, upsample


def require_unlabeled(method, unlabeled: dict | None) -> dict:
    """``unlabeled``, or ``RuntimeError`` naming the method if the trainer gave none."""
    if unlabeled is None:
        raise RuntimeError(f"method {method.name!r} needs an unlabeled batch")
    return unlabeled


@torch.no_grad()
def teacher_pseudo_labels(method, unlabeled: dict, clear_padding: bool = True):
    """The teacher on the weak view u: ``(outputs, prob, pseudo, confidence)``.

    ``outputs`` are the teacher's raw outputs (``logits`` (B, K, h, w), ``rep``, ...);
    ``prob`` float (B, K, H, W) its softmax upsampled to the crop; ``pseudo`` int64 (B, H, W)
    = argmax and ``confidence`` float (B, H, W) = max. Crop padding (``valid`` False) gets
    pseudo-label 255 and confidence 0 unless ``clear_padding`` is False.
    """
    u = unlabeled["image"]
    out = method.teacher_forward(u)
    prob = upsample(out["logits"].float(), u.shape[-2:]).softmax(1)
    confidence, pseudo = prob.max(1)
    if clear_padding and "valid" in unlabeled:
        pseudo = pseudo.masked_fill(~unlabeled["valid"], IGNORE_INDEX)
        confidence = confidence.masked_fill(~unlabeled["valid"], 0.0)
    return out, prob, pseudo, confidence


@torch.no_grad()
def pseudo_label_logs(pseudo: torch.Tensor, confidence: torch.Tensor, unlabeled: dict, threshold: float,
                      suffix: str = "", keys: tuple[str, ...] = ("precision", "coverage", "accuracy")) -> dict:
    """``{"pl_<key><suffix>": percent}`` against ``unlabeled["hidden_mask"]`` at ``threshold``
    (empty if the batch has no hidden ground truth; NaN entries are left out)."""
    if "hidden_mask" not in unlabeled:
        return {}
    q = pseudo_label_quality(pseudo, confidence, unlabeled["hidden_mask"], threshold)
    return {f"pl_{k}{suffix}": v for k, v in q.items() if k in keys and not math.isnan(v)}


@torch.no_grad()
def strong_mixed_view(method, u: torch.Tensor, *maps: torch.Tensor):
    """(S2) then the strong view: ``(strong images (B, 3, H, W), *maps mixed the same way)``.

    ``augment.mix`` picks CutMix, ClassMix (the first map holds the labels) or none.
    """
    u_mix, *mixed = mix_batch(method.cfg.augment.mix, u, *maps)
    return (method.strong(u_mix), *mixed)


def unsupervised_ce(kind: str, logits_u: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                    threshold: float) -> torch.Tensor:
    """L_u (S4) on logits (B, K, H, W): ``weighted`` (ReCo: CE over all labelled pixels times
    each image's share of pixels with q >= delta_u) or ``masked`` (UniMatch: CE over the
    pixels with q >= delta_u)."""
    fn = unsupervised_weighted_ce if kind == "weighted" else unsupervised_masked_ce
    return fn(logits_u, pseudo, confidence, threshold)


def nearest(m: torch.Tensor, size) -> torch.Tensor:
    """Nearest resize of a float map (B, H, W) to (B, *size)."""
    return F.interpolate(m.unsqueeze(1).float(), size=tuple(size), mode="nearest").squeeze(1)


def contrast_targets(mask_l: torch.Tensor, pseudo_u: torch.Tensor, confidence_u: torch.Tensor, size,
                     weak_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels int64 (B_l + B_u, h, w) and validity bool of a pixel contrast on the head grid.

    Labeled pixels keep their ground truth (valid where y != 255); unlabeled pixels their
    (mixed) pseudo-label, valid where q >= delta_w (``weak_threshold``); both
    nearest-downsampled to ``size``. The labeled batch comes first.
    """
    y_l = downsample_labels(mask_l, size)
    y_u = downsample_labels(pseudo_u, size)
    valid_u = (nearest(confidence_u, size) >= weak_threshold) & (y_u != IGNORE_INDEX)
    return torch.cat([y_l, y_u]), torch.cat([y_l != IGNORE_INDEX, valid_u])


@dataclass
class MeanTeacherStep:
    """What ``mean_teacher_step`` computed: student outputs on the labeled batch (``out_l``) and
    the strong view (``out_u``), the mixed pseudo-labels int64 (B, H, W) and confidences,
    ``losses`` {``loss_sup``: L_s, ``loss_unsup``: lambda_u L_u} and the pseudo-label ``logs``."""

    out_l: dict
    out_u: dict
    pseudo: torch.Tensor
    confidence: torch.Tensor
    losses: dict
    logs: dict


def mean_teacher_step(method, labeled: dict, unlabeled: dict | None) -> MeanTeacherStep:
    """The mean-teacher part of an iteration (S1-S4), shared by ``meanteacher``, ``reco`` and ``prcl``:

    1. the teacher on the weak view u: pseudo-labels y^ and confidences q (padding cleared);
    2. CutMix / ClassMix of u, y^, q (S2), then the strong view;
    3. the student on the labeled batch and on the strong view: L_s (S3), lambda_u L_u (S4).

    Options read: ``confidence_threshold`` (delta_u), ``unsup_loss``, ``unsup_weight``.
    Raises ``RuntimeError`` without an unlabeled batch.
    """
    o, u = method.opts, require_unlabeled(method, unlabeled)["image"]
    _, _, pseudo, conf = teacher_pseudo_labels(method, unlabeled)  # 1.
    logs = pseudo_label_logs(pseudo, conf, unlabeled, o.confidence_threshold)
    u_strong, pseudo_m, conf_m = strong_mixed_view(method, u, pseudo, conf)  # 2.
    out_l = method.student(method.augment_labeled(labeled["image"]))  # 3.
    out_u = method.student(u_strong)
    loss_u = unsupervised_ce(o.unsup_loss, upsample(out_u["logits"], u.shape[-2:]), pseudo_m, conf_m,
                             o.confidence_threshold)
    losses = {"loss_sup": method.sup_loss(out_l["logits"], labeled["mask"]), "loss_unsup": o.unsup_weight * loss_u}
    return MeanTeacherStep(out_l, out_u, pseudo_m, conf_m, losses, logs)
