"""CSS ("Space Engage"): prototypes, representation-space labels, the similarity indicator,
the prototype-anchored pixel contrast. Pure functions of tensors.

Source: Wang et al., "Space Engage: Collaborative Space Supervision for Contrastive-based
Semi-Supervised Semantic Segmentation", ICCV 2023 (arXiv 2307.09755), Eq. 2-9; official
code ``github.com/WangChangqi98/CSS`` (``generalframeworks/loss/loss.py`` ``Contrast_Loss``,
``generalframeworks/networks/ddp_model.py`` ``Model_mix`` / ``Model_cross``).

Notation (K classes, D-dim representations, rep grid h x w at stride 4):

    rho_c <- rho^batch_c                          first observation of class c        (C1)
    rho_c <- alpha rho_c + (1 - alpha) rho^batch_c  afterwards, alpha = 0.99
    S_c(p) = cos(z_p, rho_c),  P^rep_c(p) = softmax_c(S_c(p) / T)                      (C2, C3)
    y^_p = y^lgt_p if y^lgt_p == y^rep_p else 255                                      (C6)
    L_u = mean_{p in B^_u} CE(z_p, y^_p),  B^_u = {p: y^_p != 255, q^lgt_p >= delta_u}  (Eq. 8)
    L_c = -(1/|C|) sum_c (1/Q) sum_a log e^{cos(z_a, rho_c)/tau} /
            (e^{cos(z_a, rho_c)/tau} + sum_n e^{cos(z_a, z_n)/tau})                    (C7)
    lambda_c(t) = exp(-5 (t / T_total)^2)                                              (C9, s4kit)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX
from .ce import unsupervised_masked_ce, unsupervised_weighted_ce
from .contrast import Sampling, hard_anchor_contrast, own_class_scores, pixels_and_classes
from .ramps import gaussian_rampdown


def class_sums(reps: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums and counts of pixel representations.

    Args:
        reps: float (N, D) representations of valid pixels; labels: int64 (N,) in 0..K-1.
        num_classes: K.

    Returns ``(sums float (K, D), counts float (K,))``; summing these over DDP ranks
    (``s4kit.dist.all_reduce_sum``) gives the global class means of (C1).
    """
    onehot = F.one_hot(labels, num_classes).to(reps.dtype)  # (N, K)
    return onehot.T @ reps, onehot.sum(0)


@torch.no_grad()
def ema_prototypes(prototypes: torch.Tensor, seen: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
                   alpha: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA update of the global class prototypes (C1; paper Eq. 2-3; ``loss.py`` L93-109).

    Args:
        prototypes: float (K, D) current prototypes rho (zeros for unseen classes).
        seen: bool (K,) whether class c was observed before (the code tests rho_c == 0).
        sums, counts: (K, D), (K,) from ``class_sums`` (already summed over ranks).
        alpha: prototype momentum alpha_p.

    Returns ``(new prototypes (K, D), new seen (K,))``, new tensors without gradient: a
    class observed for the first time takes its batch mean exactly; an observed class moves
    by the EMA rule; a class absent from the batch (count 0) keeps its prototype.
    """
    present = counts > 0
    mean = sums / counts.clamp(min=1).unsqueeze(1)
    moved = torch.where(seen.unsqueeze(1), alpha * prototypes + (1 - alpha) * mean, mean)
    return torch.where(present.unsqueeze(1), moved, prototypes), seen | present


def rep_similarity(rep: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel to every prototype, S_c(p) (C2).

    Args: rep float (B, D, h, w); prototypes float (K, D) (a zero prototype gives 0).
    Returns float32 (B, K, h, w) in [-1, 1], also under bf16 autocast.
    """
    with torch.autocast(rep.device.type, enabled=False):
        z = F.normalize(rep.float(), dim=1)
        rho = F.normalize(prototypes.float(), dim=1)
        return torch.einsum("bdhw,kd->bkhw", z, rho)


def rep_distribution(rep: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.25,
                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """Representation-space class distribution softmax_c(S_c(p) / T) (C2 teacher side, C3
    student side = the similarity indicator j^rep; paper Eq. 4-5).

    Args:
        rep: float (B, D, h, w); prototypes: (K, D); temperature: T (s4kit/author 0.25,
            official CLI 0.5).
        size: if given, the similarities S/T are bilinearly upsampled (``align_corners=True``)
            to (H, W) before the softmax, as the logits are in the logit space.

    Returns float (B, K, h, w) (or (B, K, H, W)) summing to 1 over classes.
    """
    s = rep_similarity(rep, prototypes) / temperature
    if size is not None and tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=True)
    return s.softmax(1)


def mix_labels(pseudo_logit: torch.Tensor, pseudo_rep: torch.Tensor) -> torch.Tensor:
    """Mix pseudo-labels: the intersection of the two spaces (C6; paper Algorithm 2).

    Args: int64 (B, H, W) logit-space and representation-space labels (255 = ignore).
    Returns int64 (B, H, W): the label where both agree, 255 elsewhere.
    """
    return torch.where(pseudo_logit == pseudo_rep, pseudo_logit, torch.full_like(pseudo_logit, IGNORE_INDEX))


def mix_unsupervised_loss(logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                          threshold: float = 0.97, weighting: str = "paper",
                          unsup_loss: str = "weighted") -> torch.Tensor:
    """L_u on mix labels (C6) with one of three weightings (paper Eq. 8; ``loss.py``
    ``Attention_Threshold_Loss`` as called by ``mix_label.py``). With l_p = CE(z_p, y^_p),
    A_b = {p in b: y^_p != 255} (the agreeing pixels) and C_b = {p in b: q^lgt_p >= delta_u}:

    * ``paper`` (Eq. 8, s4kit default): a plain CE over the sampled pixels B^_u, the
      confident agreeing ones:      L_u = mean_{p in A and C} l_p
    * ``code`` (official): ReCo's per-image weight with the confident pixels counted whether
      the spaces agree or not, so w_b can exceed 1:
                                    w_b = |C_b| / |A_b|,  L_u = mean_{p: l_p > 0} w_b l_p
    * ``agree`` (s4kit before issue 14): the confidence zeroed where the spaces disagree,
      w_b = |A_b and C_b| / |A_b| (<= 1), or UniMatch's masked CE with ``unsup_loss=masked``.

    Args:
        logits: student logits float (B, K, H, W) on the strong view.
        pseudo: int64 (B, H, W) mix labels, 255 where the spaces disagree (and on padding).
        confidence: float (B, H, W) teacher logit confidence q^lgt, *not* zeroed where the
            spaces disagree (crop padding carries 0).
        threshold: delta_u (0.97); weighting: ``paper | code | agree``; unsup_loss:
            ``weighted | masked``, read only by ``agree``.

    Returns a scalar; 0 (graph-connected) if no pixel is sampled. Raises ``ValueError`` for an
    unknown ``weighting``.
    """
    if weighting == "paper":
        keep = (pseudo != IGNORE_INDEX) & (confidence >= threshold)
        if not keep.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, pseudo.masked_fill(~keep, IGNORE_INDEX), ignore_index=IGNORE_INDEX)
    if weighting == "code":
        return unsupervised_weighted_ce(logits, pseudo, confidence, threshold, count_ignored=True)
    if weighting == "agree":
        conf = confidence.masked_fill(pseudo == IGNORE_INDEX, 0.0)
        fn = unsupervised_weighted_ce if unsup_loss == "weighted" else unsupervised_masked_ce
        return fn(logits, pseudo, conf, threshold)
    raise ValueError(f"mix weighting {weighting!r}: expected paper, code or agree")


def max_rep_confidence(temperature: float, num_classes: int, simplex: bool = False) -> float:
    """Largest attainable representation-space confidence (C4), or its regular-simplex
    ceiling (C5) with ``simplex=True``: cosines lie in [-1, 1], so
    q^max = e^{1/T} / (e^{1/T} + (K-1) e^{-1/T}). A threshold above it is never reached."""
    other = -1.0 / ((num_classes - 1) * temperature) if simplex else -1.0 / temperature
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(other - 1.0 / temperature))


def anchor_weights(indicator: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                   strong_threshold: float = 0.8) -> torch.Tensor:
    """How much each pixel weighs as an anchor of (C7) relative to uniform sampling.

    Pixel p of class c is a hard anchor iff valid and j^rep_c(p) < delta_s (paper Eq. 5, the
    similarity indicator "tilts training towards under-performing representations").
    Anchors are drawn uniformly from the hard pixels of their class, so relative to drawing
    from all N_c valid pixels of c, a pixel weighs

        w_p = 1[j^rep_c(p) < delta_s] * N_c / H_c        (0 for easy pixels; mean 1 per class)

    Args:
        indicator: float (B, K, h, w) j^rep; labels: int64 (B, h, w) (255 = ignore);
        valid: bool (B, h, w); strong_threshold: delta_s (0.8).

    Returns float (B, h, w); 0 on invalid pixels and on classes without hard pixels.
    """
    keep = valid & (labels != IGNORE_INDEX)
    lab = labels.masked_fill(~keep, 0)
    j = indicator.gather(1, lab.unsqueeze(1)).squeeze(1)
    hard = keep & (j < strong_threshold)
    k = indicator.shape[1]
    n = torch.bincount(lab[keep], minlength=k).float()
    h = torch.bincount(lab[hard], minlength=k).float()
    ratio = n / h.clamp(min=1)
    return torch.where(hard, ratio[lab], torch.zeros_like(j))


def css_contrast_loss(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, indicator: torch.Tensor,
                      prototypes: torch.Tensor, strong_threshold: float = 0.8, temperature: float = 0.5,
                      num_queries: int = 256, num_negatives: int = 512,
                      literal_denominator: bool = False, sampling: Sampling = "loop") -> torch.Tensor:
    """CSS pixel contrast (C7; paper Eq. 9; ``loss.py`` L114-149).

    Like ReCo's (S5-S9), with three changes: hard anchors are chosen by the similarity
    indicator j^rep_c < delta_s (not the logit probability); the positive key of class c is
    its EMA prototype rho_c (not the batch mean); negative classes are drawn from
    softmax_{c' != c}(cos(rho_c, rho_c') / tau) over the EMA prototypes. Negative keys are
    uniformly random valid pixels of the drawn class in the local batch.

    Args:
        rep: student representations float (B, D, h, w) (labeled and unlabeled concatenated).
        labels: int64 (B, h, w), 255 = ignore; valid: bool (B, h, w).
        indicator: j^rep float (B, K, h, w) from the prototypes *before* this iteration's
            update (only read, without gradient).
        prototypes: float (K, D), the prototypes *after* the update (positive keys).
        strong_threshold: delta_s (0.8); temperature: tau (0.5); num_queries: Q (256);
        num_negatives: negatives per anchor (512).
        literal_denominator: count classes without hard anchors in |C| (code behaviour);
            default: only classes that contribute, as s4kit's ReCo.
        sampling: ``loop`` (the official draw order) or ``batched`` (one draw for all
            classes, same distribution; ``losses.contrast.hard_anchor_contrast``).

    Returns a scalar; ``0 * rep.sum()`` (graph-connected, for DDP) when fewer than two
    classes are present or no class has a hard anchor.
    """
    zero = rep.sum() * 0.0
    reps, lab, classes = pixels_and_classes(rep.float(), labels, valid)
    if classes is None:
        return zero
    with torch.no_grad():
        j = own_class_scores(indicator, labels, valid)
        protos = prototypes.detach().float()[classes]
    return hard_anchor_contrast(reps, lab, classes, j, protos, strong_threshold, temperature, num_queries,
                                num_negatives, literal_denominator, sampling=sampling) + zero


def contrast_rampdown(iteration: int, total: int, schedule: str = "global_rampdown", epoch_length: int = 1) -> float:
    """lambda_c of (C8).

    * ``global_rampdown`` (s4kit default): exp(-5 (t / T_total)^2) over global iterations;
    * ``epoch_rampdown_literal`` (official code, PRCL's ``RampdownScheduler`` stepped per
      labelled-loader epoch e = t // epoch_length): exp(-5 (e / 200)^2) for e < 200, else 0 (C9);
    * ``constant``: 1 (``ori_pseudo.py``).

    Raises ``ValueError`` for an unknown schedule.
    """
    if schedule == "global_rampdown":
        return gaussian_rampdown(iteration, max(total, 1))
    if schedule == "epoch_rampdown_literal":
        e = iteration // max(epoch_length, 1)
        return gaussian_rampdown(e, 200) if e < 200 else 0.0
    if schedule == "constant":
        return 1.0
    raise ValueError(f"lambda_c schedule {schedule!r}: expected global_rampdown, epoch_rampdown_literal or constant")
