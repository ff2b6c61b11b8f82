"""``supervised``: labeled images only. On a split like ``1_16`` it is the lower bound of
semi-supervised training; on ``full`` the upper bound.

    L = L_s = CE(f(A(x)), y)                                                        (S3)

CE over non-ignored pixels, or OHEM CE (``method.sup_loss=ohem``, the Cityscapes choice of
CSS, UniMatch and AllSpark), on logits upsampled to the crop (bilinear,
``align_corners=True``); A is the photometric augmentation of labeled images when
``augment.labeled`` (the ReCo family).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import Method, MethodOptions, opt, register


@dataclass
class SupervisedOptions(MethodOptions):
    """Options of ``supervised`` (the ``method:`` config section)."""

    name: str = "supervised"
    sup_loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = opt(0.7, "[0, 1]")
    ohem_min_kept: int = opt(200_000, "[0, inf)")


@register("supervised")
class Supervised(Method):
    """Cross-entropy on the labeled batch.

    ``train_step(labeled, unlabeled=None)`` returns ``{"loss_sup": scalar}``.
    """

    Options = SupervisedOptions

    def train_step(self, labeled: dict, unlabeled: dict | None = None) -> dict:
        out = self.student(self.augment_labeled(labeled["image"]))  # (S3)
        return {"loss_sup": self.sup_loss(out["logits"], labeled["mask"])}
