"""ReCo's pixel contrast: hard anchors, class-relation-guided negative keys, InfoNCE.

Source: docs/methods/substrate.md §5.3 (ReCo ``module_list.py`` ``compute_reco_loss``),
re-written vectorised as the reference recommends (§9). Inputs live on the head's grid
(h, w); labels and validity are nearest-downsampled by the caller.

For each class c present among the valid pixels of the batch (n classes):

    r_c = mean of the representations of the valid pixels of c                     (S5)
    Q_c = {x in P_c : P_x(c) < delta_s}       hard anchors (queries)               (S6)
    pi_c(c') = softmax_{c' != c}( cos(r_c, r_c') / tau )   negative-class sampling  (S7)
    l_c = mean_q -log exp(cos(r_q, r_c)/tau) /
                 (exp(cos(r_q, r_c)/tau) + sum_{k in N_q} exp(cos(r_q, r_k)/tau))   (S8)
    L_c = (1/n) sum_c l_c,   L_c = 0 if n <= 1                                      (S9)

Only the anchors r_q receive gradient; prototypes and keys are detached.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX


# s(a, b): float (..., E) x (..., E) -> (...), broadcasting; cosine for ReCo and CSS, MLS for PRCL
Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) over the last dimension: the similarity of ReCo (S7, S8) and CSS (C7)."""
    return F.cosine_similarity(a, b, dim=-1)


def flatten_pixels(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """(B, D, h, w), (B, h, w), (B, h, w) -> reps (N, D), labels (N,) of the valid pixels only."""
    keep = valid & (labels != IGNORE_INDEX)
    flat = rep.permute(0, 2, 3, 1)[keep]
    return flat, labels[keep]


def pixels_and_classes(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """``flatten_pixels`` plus the classes present: ``(reps (N, D), labels (N,), classes (n,))``,
    with ``classes`` None when fewer than two classes are present (no contrast possible)."""
    reps, lab = flatten_pixels(rep, labels, valid)
    classes = torch.unique(lab) if lab.numel() else None
    return reps, lab, classes if classes is not None and len(classes) > 1 else None


def own_class_scores(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each kept pixel's score for its own class, in ``flatten_pixels``' order (detached).

    (B, K, h, w) float, (B, h, w) int64, (B, h, w) bool -> (N,) float: scores[b, y, i, j]
    over the pixels with ``valid`` and a label other than 255. ReCo uses it for p(y) (S6),
    CSS for the similarity indicator j(y).
    """
    keep = valid & (labels != IGNORE_INDEX)
    per_pixel = scores.detach().permute(0, 2, 3, 1)[keep]
    return per_pixel.gather(1, labels[keep].unsqueeze(1)).squeeze(1)


def class_means(reps: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Mean representation of each class in ``classes``: (N, D), (N,), (n,) -> (n, D) (S5)."""
    onehot = (labels.unsqueeze(0) == classes.unsqueeze(1)).to(reps.dtype)  # (n, N)
    return onehot @ reps / onehot.sum(1, keepdim=True).clamp(min=1)


def sample_keys_by_class(reps: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor,
                         drawn: torch.Tensor) -> torch.Tensor:
    """One uniformly random pixel (with replacement) of each drawn class.

    Args:
        reps (N, D), labels (N,): the pixel pool; classes (n,): the present classes;
        drawn: int64 of any shape S, indices into ``classes``.

    Returns keys (*S, D). Vectorised: pixels are grouped by class once, then an offset
    plus ``floor(u * count)`` picks a pixel of the drawn class.
    """
    order = torch.argsort(labels)
    sorted_labels = labels[order]
    counts = torch.stack([(sorted_labels == c).sum() for c in classes])
    offsets = torch.cumsum(counts, 0) - counts
    u = torch.rand(drawn.shape, device=reps.device)
    pick = offsets[drawn] + torch.minimum((u * counts[drawn]).long(), counts[drawn] - 1)
    return reps[order[pick]]


def class_infonce(reps: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, i: int, hard: torch.Tensor,
                  positive: torch.Tensor, class_scores: torch.Tensor, temperature: float, num_queries: int,
                  num_negatives: int, similarity: Similarity = cosine,
                  extra_negatives: Callable | None = None) -> torch.Tensor:
    """l_c of (S8) for class ``classes[i]``: M_q anchors drawn uniformly (with replacement)
    from its hard pixels, each against the positive key and M_k negative keys.

    Args:
        reps (N, D), labels (N,): the valid pixels; classes (n,): the present classes.
        hard: int64 (H,) indices into ``reps`` of the class's hard anchors (H > 0).
        positive: (D,) the positive key (ReCo: the batch class mean; CSS: the EMA prototype).
        class_scores: (n,) relation scores of class i to every class, already divided by
            tau; negative classes c' != c are drawn from their softmax (S7).
        temperature: tau of (S8); num_queries: M_q; num_negatives: M_k.
        similarity: s(anchor, key) in (S8) (cosine; PRCL: MLS on [mu, sigma^2] rows).
        extra_negatives: optional ``fn(others, pi) -> (M_q, V, D)`` keys appended after
            the sampled negatives (PRCL's virtual negatives), called under no-grad.

    Returns the mean InfoNCE over the anchors (a scalar). Keys carry no gradient; the
    random draws are, in order: anchors, negative classes, negative pixels, then those of
    ``extra_negatives``.
    """
    anchors = reps[hard[torch.randint(hard.numel(), (num_queries,), device=reps.device)]]
    with torch.no_grad():
        others = torch.cat([torch.arange(i), torch.arange(i + 1, len(classes))]).to(reps.device)
        pi = class_scores[others].softmax(0)
        drawn = others[torch.multinomial(pi, num_queries * num_negatives, replacement=True)]
        negatives = sample_keys_by_class(reps.detach(), labels, classes, drawn.view(num_queries, num_negatives))
        keys = torch.cat([positive.expand(num_queries, 1, -1), negatives], dim=1)  # (M_q, 1 + M_k, D)
        if extra_negatives is not None:
            keys = torch.cat([keys, extra_negatives(others, pi)], dim=1)
    logits = similarity(anchors.unsqueeze(1), keys) / temperature
    return F.cross_entropy(logits, torch.zeros(num_queries, dtype=torch.long, device=reps.device))


def hard_anchor_contrast(reps: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, own_score: torch.Tensor,
                         prototypes: torch.Tensor, strong_threshold: float, temperature: float, num_queries: int,
                         num_negatives: int, literal_denominator: bool = False, similarity: Similarity = cosine,
                         extra_negatives: Callable | None = None) -> torch.Tensor:
    """(S6)-(S9) on flattened valid pixels: the one hard-anchor loop of ReCo, CSS and PRCL.

    Args:
        reps (N, D), labels (N,): the valid pixels; classes (n,): the present classes (n >= 2).
        own_score: (N,) each pixel's score for its own label, without gradient; pixels
            below ``strong_threshold`` are the hard anchors (S6). ReCo: the student's
            probability; CSS: the similarity indicator.
        prototypes: (n, D) positive keys, one per present class (ReCo: batch class means;
            CSS: EMA prototypes; PRCL: distribution prototypes [mu, sigma^2]); their
            similarities / tau drive (S7).
        temperature, num_queries, num_negatives: tau, M_q, M_k.
        literal_denominator: n counts classes without hard anchors too (ReCo code, defect 4).
        similarity: s(., .) of (S7) and (S8): ``cosine`` (ReCo, CSS) or MLS (PRCL, P2).
        extra_negatives: ``fn(i, others, pi) -> (M_q, V, D)`` more keys for class ``classes[i]``
            (PRCL's virtual negatives); see ``class_infonce``.

    Returns the mean of l_c over the counted classes, or ``reps.sum() * 0`` if no class
    has a hard anchor.
    """
    with torch.no_grad():
        proto_sim = similarity(prototypes.unsqueeze(1), prototypes.unsqueeze(0)) / temperature
    losses, counted = [], 0
    for i, c in enumerate(classes):
        hard = torch.nonzero((labels == c) & (own_score < strong_threshold)).squeeze(1)
        counted += int(literal_denominator or hard.numel() > 0)
        if hard.numel() == 0:
            continue
        extra = (lambda others, pi, i=i: extra_negatives(i, others, pi)) if extra_negatives is not None else None
        losses.append(class_infonce(reps, labels, classes, i, hard, prototypes[i], proto_sim[i], temperature,
                                    num_queries, num_negatives, similarity, extra))
    if not losses:
        return reps.sum() * 0.0
    return torch.stack(losses).sum() / counted


def reco_loss(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, prob: torch.Tensor,
              strong_threshold: float = 0.97, temperature: float = 0.5, num_queries: int = 256,
              num_negatives: int = 512, literal_denominator: bool = False) -> torch.Tensor:
    """ReCo contrastive loss (S5-S9).

    Args:
        rep: student representations float (B, D, h, w) (labeled and unlabeled concatenated).
        labels: int64 (B, h, w) (pseudo-)labels, 255 = ignore.
        valid: bool (B, h, w): [y >= 0] for labeled pixels, [q >= delta_w] for unlabeled.
        prob: the student's softmax (B, K, h, w); only P_x(label) is read, without gradient.
        strong_threshold: delta_s, hard-anchor cut (S6); 0.97 in ReCo.
        temperature: tau in (S7) and (S8); 0.5.
        num_queries, num_negatives: M_q anchors per class, M_k negatives per anchor.
        literal_denominator: ReCo-literal n counts classes with no hard anchor (defect 4 in
            substrate §9); the default counts only classes that contribute.

    Returns a scalar; ``0 * rep.sum()`` (graph-connected, for DDP) when fewer than two
    classes are present or no class has a hard anchor.
    """
    zero = rep.sum() * 0.0
    reps, lab, classes = pixels_and_classes(rep, labels, valid)
    if classes is None:
        return zero
    with torch.no_grad():
        p_label = own_class_scores(prob, labels, valid)
        protos = class_means(reps.detach(), lab, classes)
    return hard_anchor_contrast(reps, lab, classes, p_label, protos, strong_threshold, temperature, num_queries,
                                num_negatives, literal_denominator) + zero
