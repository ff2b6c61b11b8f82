"""``reco``: the mean teacher plus ReCo's pixel contrast with hard anchors and sampled negatives.

Source: Liu et al., "Bootstrapping Semantic Segmentation with Regional Contrast", ICLR
2022; reference/substrate.md §5.3-5.4 (ReCo ``train_semisup.py`` with ``compute_reco_loss``).

    L = L_s + L_u + lambda_c L_c                                                    (S10)

L_c (``s4kit.losses.contrast.reco_loss``, S5-S9) runs on the student representations of
the labeled and the strong unlabeled images, concatenated, at the head's resolution:
labels are the ground truth (valid where y != 255) and the mixed pseudo-labels (valid
where the mixed teacher confidence q >= delta_w), nearest-downsampled. Hard anchors are
pixels whose *student* probability of their label is below delta_s.

Defaults are ReCo's code: tau = 0.5, M_q = 256, M_k = 512, delta_w = 0.7,
delta_s = delta_u = 0.97, lambda_c = 1. One deliberate change: a class with no hard
anchor does not count in the denominator of (S9) (ReCo defect 4, substrate §9);
``method.literal_denominator=true`` restores the code's behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses.contrast import reco_loss
from .base import IGNORE_INDEX, downsample_labels, opt, register
from .meanteacher import MeanTeacher, MeanTeacherOptions


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


def contrast_inputs(ctx: dict, weak_threshold: float):
    """Representations, labels, validity and student probabilities on the head grid.

    From the ``MeanTeacher.train_step`` context, returns ``rep`` (2B, D, h, w), ``labels``
    int64 (2B, h, w), ``valid`` bool (2B, h, w) and ``prob`` (2B, K, h, w) with the labeled
    batch first.
    """
    out_l, out_u = ctx["out_l"], ctx["out_u"]
    size = out_l["rep"].shape[-2:]
    y_l = downsample_labels(ctx["labeled"]["mask"], size)
    y_u = downsample_labels(ctx["pseudo"], size)
    conf_u = torch.nn.functional.interpolate(ctx["confidence"].unsqueeze(1), size=tuple(size), mode="nearest").squeeze(1)
    labels = torch.cat([y_l, y_u])
    valid = torch.cat([y_l != IGNORE_INDEX, (conf_u >= weak_threshold) & (y_u != IGNORE_INDEX)])
    rep = torch.cat([out_l["rep"], out_u["rep"]]).float()
    prob = torch.cat([out_l["logits"], out_u["logits"]]).float().softmax(1)
    return rep, labels, valid, prob


@register("reco")
class ReCo(MeanTeacher):
    """Mean teacher + ReCo contrast; adds ``loss_contrast`` to ``train_step``'s output."""

    Options = RecoOptions
    uses_representation = True

    def extra_losses(self, ctx: dict) -> dict:
        o = self.opts
        rep, labels, valid, prob = contrast_inputs(ctx, o.weak_threshold)
        loss = reco_loss(rep, labels, valid, prob, o.strong_threshold, o.temperature, o.num_queries,
                         o.num_negatives, o.literal_denominator)
        ramp = min(1.0, (self.iteration + 1) / o.contrast_warmup) if o.contrast_warmup else 1.0
        return {"loss_contrast": o.contrast_weight * ramp * loss}
