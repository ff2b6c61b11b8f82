"""``meanteacher``: EMA-teacher pseudo-labels on the weak view, student on the strong mixed view.

The ReCo-family semi-supervised baseline (reference/substrate.md §3-§5; ReCo
``train_semisup.py`` without the contrastive term). One iteration:

1. teacher (EMA of the student, S1) on the weak unlabeled view u:
   q_p = max softmax, y^_p = argmax (logits upsampled to the crop);
2. optional refinement of (y^, q) by a subclass (CSS intersects two label spaces here);
3. CutMix / ClassMix of u, y^ and q jointly inside the batch (S2), then the photometric
   strong view of the mixed images;
4. student on the labeled batch (L_s, S3) and on the strong view (L_u, S4: per-image
   weight w_b = share of pixels with q >= delta_u; or UniMatch's per-pixel mask);
5. optional extra losses by a subclass (ReCo's pixel contrast, ...).

Total: L = L_s + lambda_u L_u (+ extras)                                          (S10)

Defaults follow ReCo's code: alpha = 0.99, BN buffers of the teacher its own
(``ema_buffers=own``), teacher in train mode for pseudo-labelling (``teacher_bn=train``),
delta_u = 0.97.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..data.mixing import mix_batch
from ..losses.ce import unsupervised_masked_ce, unsupervised_weighted_ce
from ..metrics import pseudo_label_quality
from ..models.ema import ema_update, make_teacher
from .base import IGNORE_INDEX, opt, register, unwrap, upsample
from .supervised import Supervised, SupervisedOptions


@dataclass
class MeanTeacherOptions(SupervisedOptions):
    """Options of ``meanteacher``; ReCo's code values unless a preset says otherwise."""

    name: str = "meanteacher"
    ema_alpha: float = opt(0.99, "[0, 1]")
    ema_buffers: Literal["own", "ema", "copy"] = "own"  # own (ReCo-literal)
    teacher_bn: Literal["train", "eval"] = "train"  # train (ReCo-literal: batch statistics)
    confidence_threshold: float = opt(0.97, "[0, 1]")  # delta_u
    unsup_loss: Literal["weighted", "masked"] = "weighted"  # weighted (ReCo S4) | masked (UniMatch per-pixel)
    unsup_weight: float = opt(1.0, "[0, inf)")  # lambda_u


@register("meanteacher")
class MeanTeacher(Supervised):
    """Mean teacher with ReCo's pseudo-label pipeline.

    ``train_step`` returns ``loss_sup``, ``loss_unsup`` (plus subclass losses) and, when the
    unlabeled batch carries ``hidden_mask``, the diagnostics ``pl_precision``,
    ``pl_coverage`` and ``pl_accuracy`` (percent) of the teacher's pseudo-labels on the
    weak view at ``confidence_threshold``.

    Raises ``RuntimeError`` if no unlabeled batch is given.
    """

    Options = MeanTeacherOptions
    uses_unlabeled = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.teacher = make_teacher(self.student)

    # -- hooks for subclasses ------------------------------------------------------------
    def refine_pseudo_labels(self, unlabeled: dict, teacher_out: dict, prob: torch.Tensor,
                             confidence: torch.Tensor, pseudo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Return ``(pseudo, confidence, diagnostics)`` after the teacher forward.

        Args:
            unlabeled: the unlabeled batch (``hidden_mask`` may be used for diagnostics only).
            teacher_out: the teacher's raw outputs on the weak view (``logits``, ``rep``, ...).
            prob: teacher softmax (B, K, H, W) at the crop; confidence, pseudo: (B, H, W).

        Default: unchanged, no diagnostics. CSS intersects logit- and representation-space
        labels here.
        """
        return pseudo, confidence, {}

    def extra_losses(self, ctx: dict) -> dict:
        """Additional losses from the iteration context (see ``train_step``). Default: none."""
        return {}

    # -- the iteration -------------------------------------------------------------------
    @torch.no_grad()
    def teacher_forward(self, image: torch.Tensor) -> dict:
        """Teacher outputs on ``image`` in the mode ``teacher_bn`` says."""
        self.teacher.train(self.opts.teacher_bn == "train")
        return self.teacher(image)

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        if unlabeled is None:
            raise RuntimeError(f"method {self.name!r} needs an unlabeled batch")
        u = unlabeled["image"]
        size = u.shape[-2:]
        with torch.no_grad():
            t_out = self.teacher_forward(u)
            prob = upsample(t_out["logits"].float(), size).softmax(1)
            confidence, pseudo = prob.max(1)
            if "valid" in unlabeled:  # crop padding carries no pseudo-label
                pseudo = pseudo.masked_fill(~unlabeled["valid"], IGNORE_INDEX)
                confidence = confidence.masked_fill(~unlabeled["valid"], 0.0)
            pseudo, confidence, logs = self.refine_pseudo_labels(unlabeled, t_out, prob, confidence, pseudo)
            if "hidden_mask" in unlabeled:
                q = pseudo_label_quality(pseudo, confidence, unlabeled["hidden_mask"], self.opts.confidence_threshold)
                logs.update({f"pl_{k}": v for k, v in q.items() if not math.isnan(v)})
            u_mix, pl_mix, conf_mix = mix_batch(self.cfg.augment.mix,
                                                u, pseudo, confidence)
            u_strong = self.strong(u_mix)
        out_l = self.student(self.augment_labeled(labeled["image"]))
        out_u = self.student(u_strong)
        logits_u = upsample(out_u["logits"], size)
        if self.opts.unsup_loss == "weighted":
            loss_u = unsupervised_weighted_ce(logits_u, pl_mix, conf_mix, self.opts.confidence_threshold)
        else:
            loss_u = unsupervised_masked_ce(logits_u, pl_mix, conf_mix, self.opts.confidence_threshold)
        losses = {"loss_sup": self.sup_loss(out_l["logits"], labeled["mask"]),
                  "loss_unsup": self.opts.unsup_weight * loss_u}
        ctx = {"labeled": labeled, "unlabeled": unlabeled, "out_l": out_l, "out_u": out_u, "teacher_out": t_out,
               "pseudo": pl_mix, "confidence": conf_mix}
        losses.update(self.extra_losses(ctx))
        losses.update(logs)
        return losses

    def after_step(self, step: int) -> None:
        """EMA update of the teacher (S1)."""
        ema_update(self.teacher, unwrap(self.student), step, self.opts.ema_alpha, self.opts.ema_buffers)

