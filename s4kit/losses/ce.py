"""Cross-entropy losses: supervised, OHEM, and the unsupervised pseudo-label loss.

Pure functions of tensors. Shapes: logits float (B, K, H, W) at label resolution;
labels int64 (B, H, W) with 255 = ignore; confidences float (B, H, W) in [0, 1].
Source: docs/methods/substrate.md §5.1-5.2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX


def supervised_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over non-ignored pixels (S3); 0 (graph-connected) if every pixel is ignored.

        L_s = 1/#{p: y_p != 255} * sum_{p: y_p != 255} -log softmax(z_p)[y_p]          (S3)
    """
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def ohem_ce(logits: torch.Tensor, labels: torch.Tensor, thresh: float = 0.7, min_kept: int = 200_000) -> torch.Tensor:
    """Online hard example mining CE (``ProbOhemCrossEntropy2d``, substrate §5.1).

    g_p = softmax(z_p)[y_p] for valid pixels; g_(m) the m-th smallest (m = ``min_kept``);
    kappa = max(thresh, g_(m)); keep valid pixels with g_p <= kappa; mean CE over them.
    """
    valid = labels != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    with torch.no_grad():
        prob = logits.float().softmax(1)
        g = prob.gather(1, labels.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)[valid]
        m = min(min_kept, g.numel())
        kappa = max(thresh, torch.kthvalue(g, m).values.item()) if m > 0 else thresh
        keep = valid.clone()
        keep[valid] = g <= kappa
    target = torch.where(keep, labels, torch.full_like(labels, IGNORE_INDEX))
    return supervised_ce(logits, target)


def unsupervised_weighted_ce(logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                             threshold: float = 0.97, count_ignored: bool = False) -> torch.Tensor:
    """ReCo's unsupervised loss (S4): a per-image weight, not a per-pixel mask.

        w_b = #{p in b: q_p >= delta_u} / #{p in b: y^_p != 255}
        L_u = mean_{p: l_p > 0} (w_b * l_p),   l_p = CE(z_p, y^_p), l_p = 0 where ignored   (S4)

    Args:
        logits: student logits (B, K, H, W) on the strong view.
        pseudo: pseudo-labels (B, H, W), 255 where ignored (padding, mix disagreement).
        confidence: teacher max-softmax (B, H, W); ignored pixels do not count in the
            numerator unless ``count_ignored``.
        threshold: delta_u (0.97 in ReCo, PRCL, CSS).
        count_ignored: count confident pixels whose label is 255 in the numerator too, as
            the CSS code does on mix labels (``Attention_Threshold_Loss`` counts every pixel
            with q >= delta_u, agreeing or not), so w_b can exceed 1.

    Returns a scalar; 0 if no pixel reaches the threshold (then every w_b = 0).
    Source: ReCo ``module_list.py`` ``compute_unsupervised_loss``; PRCL/CSS
    ``Attention_Threshold_Loss``.
    """
    valid = pseudo != IGNORE_INDEX
    ce = F.cross_entropy(logits, pseudo.masked_fill(~valid, IGNORE_INDEX), ignore_index=IGNORE_INDEX,
                         reduction="none")
    confident = (confidence >= threshold) if count_ignored else ((confidence >= threshold) & valid)
    confident = confident.flatten(1).sum(1).float()
    weight = confident / valid.flatten(1).sum(1).clamp(min=1).float()
    weighted = ce * weight.view(-1, 1, 1)
    counted = ce > 0
    if not counted.any():
        return logits.sum() * 0.0
    return weighted[counted].mean()


def unsupervised_masked_ce(logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                           threshold: float = 0.95) -> torch.Tensor:
    """UniMatch-style per-pixel masked CE (docs/methods/frameworks.md §A2, U2).

        L_u = sum_p 1[q_p >= tau] CE(z_p, y^_p) / #{p: y^_p != 255}

    The normaliser counts every non-ignored pixel, confident or not.
    """
    valid = pseudo != IGNORE_INDEX
    ce = F.cross_entropy(logits, pseudo.masked_fill(~valid, IGNORE_INDEX), ignore_index=IGNORE_INDEX,
                         reduction="none")
    keep = (confidence >= threshold) & valid
    return (ce * keep).sum() / valid.sum().clamp(min=1)
