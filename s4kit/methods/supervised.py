"""``supervised``: labeled images only. On a split like ``1_16`` it is the lower bound of
semi-supervised training; on ``full`` the upper bound.

Loss (reference/substrate.md §5.1): CE over non-ignored pixels (S3), or OHEM CE
(``method.sup_loss=ohem``, the Cityscapes choice of CSS, UniMatch and AllSpark), on logits
upsampled to the crop (bilinear, ``align_corners=True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..data.transforms import StrongAugment
from ..losses.ce import ohem_ce, supervised_ce
from .base import Method, MethodOptions, opt, register, upsample


@dataclass
class SupervisedOptions(MethodOptions):
    """Options of ``supervised`` (the ``method:`` config section)."""

    name: str = "supervised"
    sup_loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = opt(0.7, "[0, 1]")
    ohem_min_kept: int = opt(200_000, "[0, inf)")


@register("supervised")
class Supervised(Method):
    """Cross-entropy on the labeled batch (weak view, plus photometric augmentation when
    ``augment.labeled``).

    ``train_step(labeled, unlabeled=None)`` returns ``{"loss_sup": scalar}``.
    """

    Options = SupervisedOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.strong = StrongAugment(cfg.augment, cfg.data.mean, cfg.data.std)

    def augment_labeled(self, image: torch.Tensor) -> torch.Tensor:
        """Photometric augmentation of labeled images if ``augment.labeled`` (ReCo family)."""
        return self.strong(image) if self.cfg.augment.labeled else image

    def sup_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(S3) or OHEM on logits (B, K, h, w) upsampled to labels (B, H, W)."""
        logits = upsample(logits, labels.shape[-2:])
        if self.opts.sup_loss == "ohem":
            return ohem_ce(logits, labels, self.opts.ohem_thresh, self.opts.ohem_min_kept)
        return supervised_ce(logits, labels)

    def train_step(self, labeled: dict, unlabeled: dict | None = None) -> dict:
        out = self.student(self.augment_labeled(labeled["image"]))
        return {"loss_sup": self.sup_loss(out["logits"], labeled["mask"])}
