"""``reco``: the mean teacher plus ReCo's pixel contrast with hard anchors and sampled negatives.

Source: Liu et al., "Bootstrapping Semantic Segmentation with Regional Contrast", ICLR
2022; the substrate page of the method notes (ReCo ``train_semisup.py`` with
``compute_reco_loss``). One iteration:

1. the teacher on the weak unlabeled view: pseudo-labels y^ and confidences q;
2. CutMix / ClassMix of u, y^, q (S2), the strong view;
3. the student on the labeled batch and the strong view: L_s (S3), L_u (S4);
4. the pixel contrast L_c (``s4kit.losses.contrast.reco_loss``, S5-S9) on the student
   representations of both batches, concatenated, at the head's resolution: labels are the
   ground truth (valid where y != 255) and the mixed pseudo-labels (valid where the mixed
   teacher confidence q >= delta_w), nearest-downsampled. Hard anchors are pixels whose
   *student* probability of their label is below delta_s.

    L = L_s + lambda_u L_u + lambda_c L_c                                           (S10)

Defaults are ReCo's code: tau = 0.5, M_q = 256, M_k = 512, delta_w = 0.7,
delta_s = delta_u = 0.97, lambda_c = 1. One deliberate change: a class with no hard
anchor does not count in the denominator of (S9) (ReCo defect 4, substrate §9);
``method.literal_denominator=true`` restores the code's behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..losses.contrast import reco_loss
from ..losses.ramps import linear_rampup
from .base import Method, opt, register
from .meanteacher import MeanTeacherOptions
from .steps import contrast_targets, mean_teacher_step


@dataclass
class RecoOptions(MeanTeacherOptions):
    """Options of ``reco``: ReCo's code values (substrate §5.3) unless a preset says otherwise."""

    name: str = "reco"
    weak_threshold: float = opt(0.7, "[0, 1]")  # delta_w: pseudo-label validity for the contrast
    strong_threshold: float = opt(0.97, "[0, 1]")  # delta_s: hard-anchor cut
    temperature: float = opt(0.5, "(0, inf)")  # tau
    num_queries: int = opt(256, "[1, inf)")  # M_q anchors per class
    num_negatives: int = opt(512, "[1, inf)")  # M_k negative keys per anchor
    contrast_weight: float = opt(1.0, "[0, inf)")  # lambda_c
    contrast_warmup: int = opt(0, "[0, inf)")  # s4kit: lambda_c ramps up linearly over this many iterations (ReCo: 0)
    literal_denominator: bool = False  # ReCo-literal (S9) denominator
    # how anchors and keys are drawn (losses.contrast.hard_anchor_contrast): loop over classes in the
    # official order (what the equivalence harness replays) | batched: one draw, same distribution
    sampling: Literal["loop", "batched"] = "loop"


@register("reco")
class ReCo(Method):
    """Mean teacher + ReCo contrast: ``train_step`` returns ``loss_sup``, ``loss_unsup``,
    ``loss_contrast`` and, with hidden ground truth, ``pl_*`` (as ``meanteacher``)."""

    Options = RecoOptions
    uses_unlabeled = True
    uses_representation = True
    find_unused_parameters = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.make_teacher()

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        o = self.opts
        # 1-3. the mean teacher: pseudo-labels on the weak view, mixed strong view, L_s and lambda_u L_u (S1-S4)
        step = mean_teacher_step(self, labeled, unlabeled)
        out_l, out_u = step.out_l, step.out_u
        # 4. pixel contrast (S5-S9) on the head grid: ground truth + pseudo-labels with q >= delta_w
        labels, valid = contrast_targets(labeled["mask"], step.pseudo, step.confidence, out_l["rep"].shape[-2:],
                                         o.weak_threshold)
        rep = torch.cat([out_l["rep"], out_u["rep"]]).float()
        prob = torch.cat([out_l["logits"], out_u["logits"]]).float().softmax(1)  # student: picks hard anchors
        loss_c = reco_loss(rep, labels, valid, prob, o.strong_threshold, o.temperature, o.num_queries,
                           o.num_negatives, o.literal_denominator, o.sampling)
        lam_c = o.contrast_weight * linear_rampup(self.iteration, o.contrast_warmup)
        return {**step.losses, "loss_contrast": lam_c * loss_c, **step.logs}  # (S10)
