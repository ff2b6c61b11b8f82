"""PRCL: mutual-likelihood similarity, distribution prototypes, probabilistic pixel contrast.

Source: Xie et al., "Boosting Semi-Supervised Semantic Segmentation with Probabilistic
Representations", AAAI 2023 (arXiv 2210.14670); docs/methods/prcl.md §3-§6, §10 (official
code ``generalframeworks/loss/loss.py``: ``Prcl_Loss``, MLS, prototype "Equation 7/8";
``generalframeworks/scheduler/rampscheduler.py``). A pixel is a diagonal Gaussian
z = N(mu, diag sigma^2), mu the representation head's output, sigma^2 the probability head's.

Pure functions of tensors. The only cross-process step, the prototype statistics, takes a
``reduce`` callable (``s4kit.dist.all_reduce_sum`` in the method, the identity here).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .contrast import Sampling, flatten_pixels, hard_anchor_contrast, own_class_scores
from .ramps import gaussian_rampdown



# -- (P2) the mutual likelihood score -----------------------------------------------------
def mls(mu_i: torch.Tensor, sigma2_i: torch.Tensor, mu_j: torch.Tensor, sigma2_j: torch.Tensor) -> torch.Tensor:
    """Mutual likelihood score of diagonal Gaussians, averaged over dimensions.

        s(z_i, z_j) = -1/(2D) sum_d [ (mu^_i,d - mu^_j,d)^2 / v_d + ln v_d ],
        v_d = sigma^2_i,d + sigma^2_j,d,   mu^ = mu / ||mu||_2                           (P2)

    PFE's MLS (Shi & Jain, ICCV 2019) without the constant -(D/2) ln 2 pi, with a mean over
    d (official ``loss.py`` MLS). Means are L2-normalised, variances are not.

    Args: float tensors (..., D) that broadcast against each other; sigma^2 > 0.
    Returns float (...) (the broadcast leading shape).
    """
    mu_i, mu_j = F.normalize(mu_i, dim=-1), F.normalize(mu_j, dim=-1)
    v = sigma2_i + sigma2_j
    return -0.5 * ((mu_i - mu_j).pow(2) / v + v.log()).mean(-1)


# -- (P4)-(P5) distribution prototypes ------------------------------------------------------
def precision_stats(mu: torch.Tensor, sigma2: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Sufficient statistics of the product of Gaussians, per class.

    Args: mu, sigma2 float (N, D); labels int64 (N,) in [0, num_classes).
    Returns ``(precision, weighted)``, each float (K, D): sum_i 1/sigma^2_i and
    sum_i mu_i / sigma^2_i over the pixels i of each class (zeros for absent classes).
    Sums are chunk-associative, so summing them over DDP ranks equals the statistics of
    the gathered pixels (docs/methods/prcl.md §14 check 7).
    """
    onehot = F.one_hot(labels, num_classes).to(mu.dtype).t()  # (K, N)
    prec = 1.0 / sigma2
    return onehot @ prec, onehot @ (mu * prec)


def prototypes_from_stats(precision: torch.Tensor, weighted: torch.Tensor):
    """(P4)-(P5) from ``precision_stats``: float (K, D) each -> ``(mu_rho, sigma2_rho)`` (K, D).

        sigma^2_rho = (sum_i 1/sigma^2_i)^-1                          (P4, paper Eq. 8)
        mu_rho = sum_i (sigma^2_rho / sigma^2_i) * mu_i               (P5, paper Eq. 7)

    Rows of absent classes (zero precision) come back as NaN.
    """
    sigma2 = torch.where(precision > 0, 1.0 / precision, torch.full_like(precision, float("nan")))
    return weighted * sigma2, sigma2


def distribution_prototypes(mu: torch.Tensor, sigma2: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Product-of-Gaussians prototype of every class, (N, D), (N, D), (N,) -> (K, D), (K, D).

    Precision-weighted fusion (P4)-(P5): the prototype variance is the harmonic combination
    of the member variances, the mean a per-dimension convex combination of the member
    means with weights sigma^2_rho / sigma^2_i (summing to 1). NaN rows for absent classes.
    """
    return prototypes_from_stats(*precision_stats(mu, sigma2, labels, num_classes))


# -- (P9) the contrastive weight ------------------------------------------------------------
def rampdown_weight(t: float, total: float, mult: float = -5.0) -> float:
    """lambda_c = exp(mult * (t / total)^2) for 0 <= t < total, 0 afterwards (P9; official
    ``RampdownScheduler`` with ramp_mult = -5; t in epochs there, iterations in s4kit)."""
    if total <= 0 or t >= total:
        return 0.0
    return gaussian_rampdown(t, total, mult)


# -- (P6)-(P7) the probabilistic contrastive loss -----------------------------------------
def prcl_loss(mu: torch.Tensor, sigma2: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
              prob: torch.Tensor, num_classes: int, strong_threshold: float = 0.8, temperature: float = 100.0,
              num_queries: int = 256, num_negatives: int = 512, literal_denominator: bool = False,
              reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
              global_prototypes: tuple[torch.Tensor, torch.Tensor] | None = None,
              virtual_negatives: int = 0, sampling: Sampling = "loop"):
    """PRCL's contrastive loss with MLS and distribution prototypes (P6)-(P7).

    For each class c present among the valid pixels of this process (n classes):

        rho_c = N(mu_rho_c, sigma^2_rho_c), (P4)-(P5) over the valid pixels of c of *all*
                processes (statistics summed with ``reduce``), under no-grad
        anchors: Q draws with replacement from {valid pixels of c: P(c) < delta_s}
        negative classes: softmax_{c' != c}( s(rho_c, rho_c') / tau ), M_k draws per
                anchor, one random local valid pixel of each drawn class
        l_c = mean_a -log exp(s(z_a, rho_c)/tau) /
              (exp(s(z_a, rho_c)/tau) + sum_n exp(s(z_a, z_n)/tau))                      (P6)
        L = (1/n') sum_c l_c                                                             (P7)

    n' counts the classes with at least one hard anchor (s4kit default, as s4kit's ReCo);
    ``literal_denominator=True`` counts every present class (the official code).

    Args:
        mu: means float (B, D, h, w); sigma2: variances float (B, D, h, w) in (0, 1).
        labels: int64 (B, h, w) (pseudo-)labels, 255 = ignore; valid: bool (B, h, w).
        prob: the student's softmax (B, K, h, w); only P(label) is read, without gradient.
        num_classes: K. strong_threshold: delta_s (0.8). temperature: tau (100).
        num_queries, num_negatives: Q anchors per class, M_k negatives per anchor.
        reduce: sums a tensor over processes (called exactly once per call, on every
            process, before any early return, so DDP ranks stay in step).
        global_prototypes: optional ``(mu_G, sigma2_G)`` (K, D) used as positives and for
            negative-class sampling instead of the batch prototypes ([interpretation] of
            the journal's global distribution prototypes, docs/methods/prcl.md §10); a class
            whose global row is NaN falls back to its batch prototype.
        virtual_negatives: V > 0 adds V virtual negatives per anchor, drawn from
            N(mu_G,c', sigma^2_G,c') of classes c' != c drawn like the real ones
            (needs ``global_prototypes``; [interpretation] of the journal's VNs).
        sampling: ``loop`` (the official draw order) or ``batched`` (one draw for all
            classes, same distribution; ``losses.contrast.hard_anchor_contrast``). MLS is no
            dot product, so ``batched`` saves only the Python loop here, not the key work.

    Returns ``(loss, stats)``: a scalar tensor (``0 * (mu.sum() + sigma2.sum())``,
    graph-connected, when fewer than two classes are present or there is no hard anchor)
    and the summed (K, D) ``(precision, weighted)`` batch statistics (detached) for the
    caller's global prototypes. Only anchors carry gradient (keys are built under no-grad).
    """
    zero = (mu.sum() + sigma2.sum()) * 0.0
    D = mu.shape[1]
    mus, lab = flatten_pixels(mu, labels, valid)
    s2s, _ = flatten_pixels(sigma2, labels, valid)
    with torch.no_grad():
        stats = precision_stats(mus.detach().float(), s2s.detach().float(), lab, num_classes)
        stats = tuple(reduce(s.contiguous()) for s in stats)
    if lab.numel() == 0:
        return zero, stats
    classes = torch.unique(lab)
    if len(classes) <= 1:
        return zero, stats
    with torch.no_grad():
        p_label = own_class_scores(prob, labels, valid)  # hard anchors: P(label) < delta_s (P6)
        proto_mu, proto_s2 = prototypes_from_stats(*stats)
        if global_prototypes is not None:
            g_mu, g_s2 = global_prototypes
            have = ~torch.isnan(g_mu).any(1) & ~torch.isnan(g_s2).any(1)
            proto_mu = torch.where(have[:, None], g_mu, proto_mu)
            proto_s2 = torch.where(have[:, None], g_s2, proto_s2)
        proto_mu, proto_s2 = proto_mu[classes], proto_s2[classes]  # (n, D)

    def gaussian_mls(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (P2) on [mu, sigma^2] rows (..., 2D)
        return mls(a[..., :D], a[..., D:], b[..., :D], b[..., D:])

    def virtual(i: int, others: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:  # V draws from N(mu_G, sigma2_G)
        vd = others[torch.multinomial(pi, num_queries * virtual_negatives, replacement=True)]
        vd = vd.view(num_queries, virtual_negatives)
        v_mu = proto_mu[vd] + proto_s2[vd].sqrt() * torch.randn_like(proto_mu[vd])
        return torch.cat([v_mu, proto_s2[vd]], -1)

    def virtual_batched(probs: torch.Tensor) -> torch.Tensor:  # (n_h, n) -> (n_h, Q, V, 2D), one draw
        vd = torch.multinomial(probs, num_queries * virtual_negatives, replacement=True)
        vd = vd.view(-1, num_queries, virtual_negatives)
        v_mu = proto_mu[vd] + proto_s2[vd].sqrt() * torch.randn_like(proto_mu[vd])
        return torch.cat([v_mu, proto_s2[vd]], -1)

    # every pixel and prototype is one row [mu, sigma^2] (N, 2D): anchors keep the gradient of both
    loss = hard_anchor_contrast(torch.cat([mus, s2s], 1), lab, classes, p_label, torch.cat([proto_mu, proto_s2], 1),
                                strong_threshold, temperature, num_queries, num_negatives, literal_denominator,
                                similarity=gaussian_mls,
                                extra_negatives=virtual if virtual_negatives > 0 and global_prototypes is not None
                                else None, sampling=sampling,
                                extra_negatives_batched=virtual_batched
                                if virtual_negatives > 0 and global_prototypes is not None else None)
    return loss + zero, stats


# -- variance regularisation ([interpretation], off by default) ----------------------------
def variance_regularizer(sigma2: torch.Tensor) -> torch.Tensor:
    """[interpretation] KL(N(mu, diag sigma^2) || N(mu, I)) per dimension, averaged:

        R = mean_d 1/2 (sigma^2_d - ln sigma^2_d - 1)  >= 0, zero iff sigma^2 = 1

    The AAAI abstract says "we regularize the distribution variance" but neither the form
    nor any code exists (docs/methods/prcl.md §6); an unused ``KL_Divergence_2D`` class in an
    old ``loss.py`` suggests a KL to a unit Gaussian. It keeps sigma^2 away from 0, where
    MLS would otherwise reward over-confidence (§3, check 12).

    Args: sigma2 float (..., D) in (0, 1). Returns a scalar (mean over all elements).
    """
    return 0.5 * (sigma2 - sigma2.log() - 1.0).mean()
