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

Two samplers draw the anchors and keys, selected by ``sampling`` (``method.sampling``):

* ``loop`` (default): a Python loop over the classes, drawing in the official code's order
  (anchors, negative classes, negative pixels, class by class); the equivalence harness
  (benchmarks/official_equivalence) replays the official draws through it.
* ``batched``: one draw for all classes at once (``draw_contrast_batched``) and the InfoNCE
  of every class in one pass (``contrast_from_draws``); the same distribution as ``loop``
  (each class's anchors uniform with replacement over its hard pixels, negative classes
  from the same softmax, negative pixels uniform within their class) but another
  consumption of the random stream, so not the same numbers under one seed. With the
  cosine similarity, the anchor-key similarities are dot products of unit vectors gathered
  in chunks (``gathered_dot``), which is where most of the speed-up comes from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX


# s(a, b): float (..., E) x (..., E) -> (...), broadcasting; cosine for ReCo and CSS, MLS for PRCL
Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# how anchors and keys are drawn: a loop over classes (official draw order) or one batched draw
Sampling = Literal["loop", "batched"]


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


def sample_pixels_by_class(labels: torch.Tensor, classes: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """Index of one uniformly random pixel (with replacement) of each drawn class.

    Args:
        labels (N,): the pixel pool's labels; classes (n,): the present classes (sorted, as
        ``torch.unique`` returns them); drawn: int64 of any shape S, indices into ``classes``.

    Returns int64 (*S,) indices into the pool. Pixels are grouped by class once, then an
    offset plus ``floor(u * count)`` (one ``torch.rand(S)``) picks a pixel of the drawn class.
    """
    order = torch.argsort(labels)
    counts = (labels.unsqueeze(0) == classes.unsqueeze(1)).sum(1)  # (n,)
    offsets = torch.cumsum(counts, 0) - counts
    u = torch.rand(drawn.shape, device=labels.device)
    pick = offsets[drawn] + torch.minimum((u * counts[drawn]).long(), counts[drawn] - 1)
    return order[pick]


def sample_keys_by_class(reps: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor,
                         drawn: torch.Tensor) -> torch.Tensor:
    """One uniformly random pixel (with replacement) of each drawn class.

    Args:
        reps (N, D), labels (N,): the pixel pool; classes (n,): the present classes;
        drawn: int64 of any shape S, indices into ``classes``.

    Returns keys (*S, D): ``reps[sample_pixels_by_class(labels, classes, drawn)]``.
    """
    return reps[sample_pixels_by_class(labels, classes, drawn)]


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
                         extra_negatives: Callable | None = None, sampling: Sampling = "loop",
                         extra_negatives_batched: Callable | None = None) -> torch.Tensor:
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
            (PRCL's virtual negatives); see ``class_infonce``. Read by ``sampling="loop"``.
        sampling: ``loop`` (a loop over the classes, ``class_infonce``; the official draw
            order) or ``batched`` (one draw for all classes, ``draw_contrast_batched`` and
            ``contrast_from_draws``; same distribution, other random numbers).
        extra_negatives_batched: ``fn(probs (n_h, n)) -> (n_h, M_q, V, D)``, the batched form
            of ``extra_negatives`` (``probs``: ``ContrastDraws.probs``). Read by ``batched``.

    Returns the mean of l_c over the counted classes, or ``reps.sum() * 0`` if no class
    has a hard anchor. Raises ``ValueError`` for an unknown ``sampling``.
    """
    if sampling not in ("loop", "batched"):
        raise ValueError(f"contrast sampling {sampling!r}: expected loop or batched")
    with torch.no_grad():
        proto_sim = similarity(prototypes.unsqueeze(1), prototypes.unsqueeze(0)) / temperature
    if sampling == "batched":
        with torch.no_grad():
            draws = draw_contrast_batched(labels, classes, own_score < strong_threshold, proto_sim, num_queries,
                                          num_negatives)
            extra = (extra_negatives_batched(draws.probs)
                     if extra_negatives_batched is not None and draws.rows.numel() else None)
        if draws.rows.numel() == 0:
            return reps.sum() * 0.0
        per_class = contrast_from_draws(reps, prototypes, draws, temperature, similarity, extra)
        return per_class.sum() / (len(classes) if literal_denominator else draws.rows.numel())
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


# -- the batched sampler ---------------------------------------------------------------------
@dataclass
class ContrastDraws:
    """One batched draw of ``draw_contrast_batched``, for the n_h present classes that have a
    hard anchor (M_q anchors each, M_k negative keys per anchor).

    rows: int64 (n_h,) positions in ``classes`` of those classes, ascending;
    anchors: int64 (n_h, M_q) indices into the pixel pool, each row within its class's hard pixels;
    negative_classes: int64 (n_h, M_q, M_k) positions in ``classes``, never the row's own;
    negatives: int64 (n_h, M_q, M_k) indices into the pixel pool, pixels of those classes;
    probs: float (n_h, n) each row's negative-class distribution pi_c (S7), 0 on its own class.
    """

    rows: torch.Tensor
    anchors: torch.Tensor
    negative_classes: torch.Tensor
    negatives: torch.Tensor
    probs: torch.Tensor


@torch.no_grad()
def draw_contrast_batched(labels: torch.Tensor, classes: torch.Tensor, hard: torch.Tensor, class_scores: torch.Tensor,
                          num_queries: int, num_negatives: int) -> ContrastDraws:
    """Anchors and negative keys of every class in one draw (the batched form of the loop's
    per-class ``torch.randint`` / ``torch.multinomial`` / ``sample_keys_by_class``).

    Args:
        labels: int64 (N,) the pool's labels, each one of ``classes``; classes: int64 (n,)
            sorted (``torch.unique``); hard: bool (N,) the hard anchors (S6).
        class_scores: float (n, n) relation scores already divided by tau (row c: class c to
            every class); row c's negative classes are drawn from softmax over c' != c (S7).
        num_queries, num_negatives: M_q, M_k.

    Returns ``ContrastDraws``. The distribution is the loop's: anchors uniform with
    replacement over the class's hard pixels (an offset into the hard pixels grouped by class
    plus ``floor(u * H_c)``, u a float64 uniform, so the bias is below H_c / 2^53), negative
    classes i.i.d. from pi_c (one ``torch.multinomial`` on the (n_h, n) matrix), negative
    pixels uniform within their class (``sample_pixels_by_class``, as the loop). Random numbers
    are drawn in this order: anchors, negative classes, negative pixels.
    """
    n, device = len(classes), labels.device
    position = torch.searchsorted(classes, labels)  # (N,) each pixel's class position
    hard_idx = torch.nonzero(hard).squeeze(1)
    hard_pos = position[hard_idx]
    counts = torch.bincount(hard_pos, minlength=n)  # (n,) H_c
    rows = torch.nonzero(counts).squeeze(1)  # (n_h,)
    if rows.numel() == 0:
        empty = torch.empty(0, num_queries, num_negatives, dtype=torch.long, device=device)
        return ContrastDraws(rows, empty[:, :, 0], empty, empty, class_scores.new_empty(0, n))
    grouped = hard_idx[torch.argsort(hard_pos, stable=True)]  # hard pixels, class by class
    offsets = (torch.cumsum(counts, 0) - counts)[rows].unsqueeze(1)  # (n_h, 1)
    h = counts[rows].unsqueeze(1)
    u = torch.rand(rows.numel(), num_queries, dtype=torch.float64, device=device)
    anchors = grouped[offsets + torch.minimum((u * h).long(), h - 1)]  # (n_h, M_q)
    own = rows.unsqueeze(1) == torch.arange(n, device=device)  # (n_h, n)
    probs = class_scores[rows].float().masked_fill(own, float("-inf")).softmax(1)
    drawn = torch.multinomial(probs, num_queries * num_negatives, replacement=True)
    drawn = drawn.view(rows.numel(), num_queries, num_negatives)
    return ContrastDraws(rows, anchors, drawn, sample_pixels_by_class(labels, classes, drawn), probs)


class _GatheredDot(torch.autograd.Function):
    """out[r, m] = <a[r], z[idx[r, m]]> with the keys gathered chunk by chunk, in the forward
    and again in the backward, so no (R, M, D) key tensor is kept for the backward. Gradient
    for ``a`` only (``z`` is a constant)."""

    @staticmethod
    def forward(ctx, a, z, idx, rows_per_chunk):
        out = a.new_empty(idx.shape)
        for r in range(0, idx.shape[0], rows_per_chunk):
            i = idx[r:r + rows_per_chunk]
            keys = z.index_select(0, i.reshape(-1)).view(*i.shape, -1)  # (r, M, D)
            out[r:r + rows_per_chunk] = torch.bmm(keys, a[r:r + rows_per_chunk].unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(z, idx)
        ctx.rows_per_chunk = rows_per_chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        z, idx = ctx.saved_tensors
        step = ctx.rows_per_chunk
        ga = grad.new_empty(idx.shape[0], z.shape[1])
        for r in range(0, idx.shape[0], step):
            i = idx[r:r + step]
            keys = z.index_select(0, i.reshape(-1)).view(*i.shape, -1)
            ga[r:r + step] = torch.bmm(grad[r:r + step].unsqueeze(1), keys).squeeze(1)
        return ga, None, None, None


def gathered_dot(a: torch.Tensor, z: torch.Tensor, idx: torch.Tensor, chunk_elements: int = 2 ** 25) -> torch.Tensor:
    """Dot products of rows with gathered keys: (R, D), (N, D), int64 (R, M) -> (R, M),
    ``out[r, m] = a[r] . z[idx[r, m]]``; differentiable in ``a`` only. At most
    ``chunk_elements`` key entries are gathered at a time (2^25: 128 MB in float32)."""
    rows = max(1, chunk_elements // max(1, idx.shape[1] * z.shape[1]))
    return _GatheredDot.apply(a, z.detach(), idx, rows)


def contrast_from_draws(reps: torch.Tensor, prototypes: torch.Tensor, draws: ContrastDraws, temperature: float,
                        similarity: Similarity = cosine, extra: torch.Tensor | None = None,
                        chunk_elements: int = 2 ** 25) -> torch.Tensor:
    """l_c of (S8) for every drawn class at once, from ``draws``.

    Args:
        reps (N, D): the pixel pool (anchors carry its gradient; keys are detached).
        prototypes (n, D): positive keys of the present classes (detached here).
        draws: ``draw_contrast_batched``'s; temperature: tau.
        similarity: ``cosine`` takes the fast path (unit vectors, ``gathered_dot``); any other
            s(., .) is evaluated on gathered keys, ``chunk_elements`` key entries at a time.
        extra: optional (n_h, M_q, V, D) more negative keys per anchor, after the sampled ones.

    Returns float (n_h,): the mean InfoNCE over each drawn class's anchors, in ``draws.rows``
    order. Runs in float32 with autocast off (as ``cosine_similarity`` under autocast).
    """
    n_h, q = draws.anchors.shape
    m, d = draws.negatives.shape[-1], reps.shape[1]
    with torch.autocast(reps.device.type, enabled=False):
        reps = reps.float()
        anchors = reps[draws.anchors]  # (n_h, M_q, D)
        positive = prototypes.detach().float()[draws.rows].unsqueeze(1)  # (n_h, 1, D)
        if similarity is cosine:
            unit = F.normalize(anchors, dim=-1, eps=1e-8)
            pos = (unit * F.normalize(positive, dim=-1, eps=1e-8)).sum(-1, keepdim=True)  # (n_h, M_q, 1)
            z = F.normalize(reps.detach(), dim=-1, eps=1e-8)
            neg = gathered_dot(unit.reshape(n_h * q, d), z, draws.negatives.reshape(n_h * q, m), chunk_elements)
            parts = [pos, neg.view(n_h, q, m)]
            if extra is not None:
                parts.append(similarity(anchors.unsqueeze(2), extra.float()))
            logits = torch.cat(parts, -1)
        else:
            pool = reps.detach()
            step = max(1, chunk_elements // max(1, q * (1 + m) * d))
            chunks = []
            for r in range(0, n_h, step):
                keys = [positive[r:r + step].expand(-1, q, -1).unsqueeze(2), pool[draws.negatives[r:r + step]]]
                if extra is not None:
                    keys.append(extra[r:r + step].float())
                chunks.append(similarity(anchors[r:r + step].unsqueeze(2), torch.cat(keys, 2)))
            logits = torch.cat(chunks)
        logits = logits / temperature  # (n_h, M_q, 1 + M_k [+ V])
        target = torch.zeros(n_h * q, dtype=torch.long, device=reps.device)
        return F.cross_entropy(logits.reshape(n_h * q, -1), target, reduction="none").view(n_h, q).mean(1)


def reco_loss(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, prob: torch.Tensor,
              strong_threshold: float = 0.97, temperature: float = 0.5, num_queries: int = 256,
              num_negatives: int = 512, literal_denominator: bool = False,
              sampling: Sampling = "loop") -> torch.Tensor:
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
        sampling: ``loop`` (the official draw order) or ``batched`` (one draw for all
            classes, same distribution; see ``hard_anchor_contrast``).

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
                                num_negatives, literal_denominator, sampling=sampling) + zero
