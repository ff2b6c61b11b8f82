"""``meanteacher``: EMA-teacher pseudo-labels on the weak view, student on the strong mixed view.

The ReCo-family semi-supervised baseline (the substrate page of the method notes; ReCo
``train_semisup.py`` without the contrastive term). One iteration:

1. the teacher (EMA of the student, S1) on the weak unlabeled view u:
   q_p = max softmax, y^_p = argmax (logits upsampled to the crop);
2. CutMix / ClassMix of u, y^ and q jointly inside the batch (S2), then the photometric
   strong view of the mixed images;
3. the student on the labeled batch (L_s, S3) and on the strong view (L_u, S4: per-image
   weight w_b = share of pixels with q >= delta_u; or UniMatch's per-pixel mask);
4. after the optimiser step, the EMA update of the teacher (S1).

    L = L_s + lambda_u L_u                                                          (S10)

Defaults follow ReCo's code: alpha = 0.99, BN buffers of the teacher its own
(``ema_buffers=own``), teacher in train mode for pseudo-labelling (``teacher_bn=train``),
delta_u = 0.97.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import Method, opt, register
from .steps import mean_teacher_step
from .supervised import SupervisedOptions


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
class MeanTeacher(Method):
    """Mean teacher with ReCo's pseudo-label pipeline.

    ``train_step`` returns ``loss_sup``, ``loss_unsup`` and, when the unlabeled batch carries
    ``hidden_mask``, the diagnostics ``pl_precision``, ``pl_coverage`` and ``pl_accuracy``
    (percent) of the teacher's pseudo-labels on the weak view at ``confidence_threshold``.

    Raises ``RuntimeError`` if no unlabeled batch is given.
    """

    Options = MeanTeacherOptions
    uses_unlabeled = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.make_teacher()

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        # 1. teacher pseudo-labels on the weak view; 2. mixed strong view; 3. L_s and lambda_u L_u
        step = mean_teacher_step(self, labeled, unlabeled)
        return {**step.losses, **step.logs}  # L = L_s + lambda_u L_u  (S10)
