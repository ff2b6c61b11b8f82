"""Region-level losses: MaskFormer's set loss and the four RC²L losses.

Sources:
* MaskFormer (Cheng et al., NeurIPS 2021) §3.2-3.4 and ``mask_former/modeling/matcher.py``,
  ``criterion.py``: Hungarian matching with class, focal and dice costs (R4), the set loss
  (R5) with a down-weighted no-object class, deep supervision;
* RC²L (Zhang et al., IJCAI 2022, arXiv 2204.13314): names and roles of Region Class
  Consistency (RCC), Region Mask Contrastive (RMC), Region Feature Contrastive (RFC) and
  Semantic Mask Consistency (SMC). The paper's equations are not available; the formulas
  (R6)-(R9) are s4kit's reconstruction (docs/methods/rc2l.md §8), equation numbers as there.

Notation: N queries, K classes (index K = no-object, "∅"), P = h*w pixels of the head grid,
masks flattened to (.., P); ``valid`` (P,) bool excludes ignore (255) and crop padding.
Every teacher quantity is passed in detached by the caller (stop-gradient, sg).

Soft Dice coefficient used throughout the RC²L losses:

    D(a, b) = 2 sum(a b) / (sum a + sum b + eps)  in [0, 1]
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..labels import IGNORE_INDEX

EPS = 1e-6


# ---------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------
def label_segments(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskFormer's ground-truth format for semantic segmentation: one binary segment per
    class present in ``labels`` (ignore 255 excluded).

    Args: labels int64 (h, w) or (P,). Returns ``classes`` int64 (M,) ascending and ``masks``
    float (M, P) in {0, 1}. Source: MaskFormer ``mask_former_semantic_dataset_mapper.py``.
    """
    flat = labels.reshape(-1)
    classes = torch.unique(flat[(flat != IGNORE_INDEX) & (flat < num_classes)])
    return classes, (flat.unsqueeze(0) == classes.unsqueeze(1)).float()


def pairwise_focal_cost(mask_logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                        gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss of every (query, segment) pair, averaged over pixels: (N, P), (M, P) -> (N, M).

        C_focal(i, j) = 1/P sum_p [ t_jp * a (1-s_ip)^g BCE(x_ip, 1) + (1-t_jp) (1-a) s_ip^g BCE(x_ip, 0) ]

    with s = sigmoid(x). Source: MaskFormer ``matcher.py`` ``batch_sigmoid_focal_loss``.
    """
    p = mask_logits.shape[-1]
    s = mask_logits.sigmoid()
    pos = alpha * (1 - s) ** gamma * F.binary_cross_entropy_with_logits(mask_logits, torch.ones_like(s), reduction="none")
    neg = (1 - alpha) * s ** gamma * F.binary_cross_entropy_with_logits(mask_logits, torch.zeros_like(s), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / max(p, 1)


def pairwise_dice_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every pair: (N, P) logits, (M, P) targets -> (N, M).

        C_dice(i, j) = 1 - (2 sum_p s_ip t_jp + 1) / (sum_p s_ip + sum_p t_jp + 1)

    Source: MaskFormer ``matcher.py`` ``batch_dice_loss``.
    """
    s = mask_logits.sigmoid()
    return 1 - (2 * s @ targets.T + 1) / (s.sum(-1, keepdim=True) + targets.sum(-1).unsqueeze(0) + 1)


def matching_cost(class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor, targets: torch.Tensor,
                  w_class: float = 1.0, w_focal: float = 20.0, w_dice: float = 1.0) -> torch.Tensor:
    """MaskFormer's matching cost (R4) of N queries against M segments, (N, M):

        C(i, j) = -w_cls p_i(c_j) + w_focal C_focal(m_i, t_j) + w_dice C_dice(m_i, t_j)

    Args: class_logits (N, K+1), mask_logits (N, P), classes int64 (M,), targets float (M, P)
    (valid pixels only). Source: MaskFormer ``matcher.py`` ``memory_efficient_forward``.
    """
    prob = class_logits.float().softmax(-1)
    mask_logits, targets = mask_logits.float(), targets.float()
    return (-w_class * prob[:, classes] + w_focal * pairwise_focal_cost(mask_logits, targets)
            + w_dice * pairwise_dice_cost(mask_logits, targets))


@torch.no_grad()
def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a (N, M) cost matrix (Hungarian algorithm).

    Returns ``(rows, cols)`` int64 of length min(N, M), sorted by ``cols`` so that
    ``rows[j]`` is the query matched to segment ``cols[j]`` (``cols = arange(M)`` if N >= M).
    Raises ``ValueError`` on a non-finite cost. Uses ``scipy.optimize.linear_sum_assignment``.
    """
    c = cost.detach().float().cpu().numpy()
    if not np.isfinite(c).all():
        raise ValueError("matching cost contains NaN or inf")
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    dev = cost.device
    return torch.as_tensor(rows[order], dtype=torch.long, device=dev), torch.as_tensor(cols[order], dtype=torch.long, device=dev)


def sigmoid_focal_loss(mask_logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Per-mask sigmoid focal loss averaged over pixels: (J, P), (J, P) -> (J,) (alpha 0.25, gamma 2).

        L_focal = 1/P sum_p a_t (1 - s_t)^g BCE(x, t),   s_t = s if t = 1 else 1 - s

    Source: MaskFormer ``criterion.py`` ``sigmoid_focal_loss`` (Lin et al. 2017).
    """
    s = mask_logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")
    s_t = s * targets + (1 - s) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (a_t * (1 - s_t) ** gamma * ce).mean(-1)


def dice_loss(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss (J, P), (J, P) -> (J,): 1 - (2 sum s t + 1) / (sum s + sum t + 1).

    Source: MaskFormer ``criterion.py`` ``dice_loss``.
    """
    s = mask_logits.sigmoid()
    return 1 - (2 * (s * targets).sum(-1) + 1) / (s.sum(-1) + targets.sum(-1) + 1)


def set_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
             no_object_weight: float = 0.1, w_class: float = 1.0, w_focal: float = 20.0,
             w_dice: float = 1.0) -> dict[str, torch.Tensor]:
    """MaskFormer's set loss (R5) of one decoder layer against label maps.

        L = 1/sum_i w_i sum_i w_i [-log p_i(c^_i)]
            + 1/N_gt sum_j [ w_focal L_focal(m_sigma(j), t_j) + w_dice L_dice(m_sigma(j), t_j) ]

    c^_i = c_j if query i is matched to segment j (Hungarian, cost (R4)), else ∅; w_∅ =
    ``no_object_weight``, other w_i = 1; N_gt = segments in the batch (at least 1).

    Args:
        class_logits: (B, N, K+1); mask_logits: (B, N, h, w).
        labels: int64 (B, h, w) on the mask grid, 255 = ignore (those pixels are left out of
            the matching and the mask losses).

    Returns ``{"ce", "focal", "dice"}`` scalars (the focal and dice terms already weighted).
    Note: MaskFormer averages N_gt over GPUs; s4kit uses the local count.
    """
    b, n, kp1 = class_logits.shape
    k = kp1 - 1
    target_cls = torch.full((b, n), k, dtype=torch.long, device=class_logits.device)
    pred, tgt = [], []
    for i in range(b):
        valid = labels[i].reshape(-1) != IGNORE_INDEX
        classes, masks = label_segments(labels[i], k)
        if len(classes) == 0:
            continue
        ml = mask_logits[i].reshape(n, -1)[:, valid]
        masks = masks[:, valid]
        rows, cols = hungarian_match(matching_cost(class_logits[i].detach(), ml.detach(), classes, masks,
                                                   w_class, w_focal, w_dice))
        target_cls[i, rows] = classes[cols]
        pred.append(ml[rows])
        tgt.append(masks[cols])
    weight = torch.ones(kp1, device=class_logits.device)
    weight[k] = no_object_weight
    ce = F.cross_entropy(class_logits.float().reshape(b * n, kp1), target_cls.reshape(-1), weight=weight)
    if not pred:
        zero = mask_logits.sum() * 0.0
        return {"ce": ce, "focal": zero, "dice": zero}
    n_gt = max(sum(len(p) for p in pred), 1)
    focal = sum(sigmoid_focal_loss(p.float(), t).sum() for p, t in zip(pred, tgt)) / n_gt
    dice = sum(dice_loss(p.float(), t).sum() for p, t in zip(pred, tgt)) / n_gt
    return {"ce": w_class * ce, "focal": w_focal * focal, "dice": w_dice * dice}


def mask_average_pool(feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mask average pooling (MAP, R2): r_i = sum_p m_i[p] F[:, p] / (sum_p m_i[p] + eps).

    Args: feat (C, P) or (B, C, P); masks (J, P) or (B, J, P) with values in [0, 1].
    Returns region features (J, C) or (B, J, C). An empty mask gives a zero (finite) vector.
    Source: RC²L Fig. 2 caption ("MAP"), docs/methods/rc2l.md (R2).
    """
    num = masks @ feat.transpose(-1, -2)
    return num / (masks.sum(-1, keepdim=True) + EPS)


def dice_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Soft Dice coefficients of every pair: (J, P), (M, P) -> (J, M), D(a, b) = 2ab / (a + b + eps)."""
    return 2 * a @ b.T / (a.sum(-1, keepdim=True) + b.sum(-1).unsqueeze(0) + EPS)


# ---------------------------------------------------------------------------------------
# teacher regions (docs/methods/rc2l.md §6, T1)
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_regions(class_logits: torch.Tensor, mask_logits: torch.Tensor, valid: torch.Tensor,
                    threshold: float = 0.7, mask_threshold: float = 0.5):
    """Confident teacher queries of one image (T1): keep query i iff
    argmax_{K+1} p^t_i != ∅, max_{c<K} p^t_i(c) >= ``threshold`` and its binary mask
    [sigmoid(m~^t_i) > ``mask_threshold``] has at least one valid pixel.

    Args: class_logits (N, K+1), mask_logits (N, P), valid bool (P,).
    Returns ``(index int64 (N^t,), classes int64 (N^t,), hard float (N^t, P), soft float (N^t, P))``,
    masks zeroed outside ``valid``.
    """
    prob = class_logits.float().softmax(-1)
    k = prob.shape[-1] - 1
    conf, cls = prob[:, :k].max(-1)
    soft = mask_logits.float().sigmoid() * valid
    hard = (soft > mask_threshold).float()
    keep = (prob.argmax(-1) != k) & (conf >= threshold) & (hard.sum(-1) > 0)
    idx = keep.nonzero().squeeze(1)
    return idx, cls[idx], hard[idx], soft[idx]


@torch.no_grad()
def merge_same_class(index: torch.Tensor, classes: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor,
                     confidence: torch.Tensor):
    """One teacher region per class, as semantic ground truth has (``label_segments``).

    Regions of the same class c in one image merge into one: hard mask = union (max), soft
    mask = max, query index = the most confident of them. s4kit's option
    (``rc2l`` ``merge_regions``), not in the reference: two teacher queries on one digit would
    otherwise be each other's negatives in RMC.

    Args: index int64 (N^t,), classes int64 (N^t,), hard / soft float (N^t, P), confidence
    float (N^t,). Returns the same four tensors with one row per distinct class, classes
    ascending.
    """
    uniq = torch.unique(classes)
    if len(uniq) == len(classes):
        order = classes.argsort()
        return index[order], classes[order], hard[order], soft[order]
    out_i, out_h, out_s = [], [], []
    for c in uniq:
        sel = (classes == c).nonzero().squeeze(1)
        out_i.append(index[sel[confidence[sel].argmax()]])
        out_h.append(hard[sel].amax(0))
        out_s.append(soft[sel].amax(0))
    return torch.stack(out_i), uniq, torch.stack(out_h), torch.stack(out_s)


# ---------------------------------------------------------------------------------------
# the four RC²L losses (reconstruction, docs/methods/rc2l.md §8)
# ---------------------------------------------------------------------------------------
# (R6)  L_rcc = 1/sum_i w_i sum_i w_i [-log p^s_i(c^_i)],  c^_i = c_j if i = sigma(j) else ∅,  w_∅ = 0.1
def rcc_loss(class_logits: torch.Tensor, targets: torch.Tensor, no_object_weight: float = 0.1) -> torch.Tensor:
    """Region Class Consistency (R6): the student's region classes follow the teacher's.

    Args:
        class_logits: student (B, N, K+1) or (N, K+1).
        targets: int64 of the same leading shape: the matched teacher region's class, K (∅)
            for unmatched queries (or -1: not supervised).
        no_object_weight: w_∅ (MaskFormer's 0.1).

    A target of -1 leaves that query out (``rc2l``'s ``rcc_unmatched=ignore``).

    Returns the weighted CE, normalised by the sum of the weights of the kept queries (a
    scalar; 0 without graph if every query is left out). With no teacher region every target
    is ∅: the loss teaches the no-object class (reference §12).
    """
    kp1 = class_logits.shape[-1]
    weight = torch.ones(kp1, device=class_logits.device)
    weight[-1] = no_object_weight
    targets = targets.reshape(-1)
    if not (targets >= 0).any():
        return torch.zeros((), device=class_logits.device)
    return F.cross_entropy(class_logits.float().reshape(-1, kp1), targets, weight=weight, ignore_index=-1)


# (R7)  L_rmc = 1/N^t sum_j -log exp(D(m^s_sigma(j), sg m^t_j)/tau_m) / sum_k exp(D(m^s_sigma(j), sg m^t_k)/tau_m)
def rmc_loss(student_masks: list[torch.Tensor], teacher_masks: list[torch.Tensor],
             temperature: float = 0.1) -> torch.Tensor:
    """Region Mask Contrastive (R7): InfoNCE over masks within each image.

    Args:
        student_masks: per image, the matched student masks m^s_sigma(j), probabilities
            (N^t, P) in [0, 1] (zero outside valid pixels), row j matched to teacher region j.
        teacher_masks: per image, the teacher masks m^t_j (N^t, P) (detached).
        temperature: tau_m (s4kit: 0.1).

    The anchor is the student mask, the positive its teacher region, the negatives the
    other teacher regions of the *same image* (masks of different images are not spatially
    comparable). Images with N^t < 2 are skipped; the result is the mean over the kept
    images of the per-image mean, or 0 (no graph) when none is kept.
    """
    per_image = []
    for s, t in zip(student_masks, teacher_masks):
        if len(t) < 2:
            continue
        logits = dice_matrix(s.float(), t.float()) / temperature
        per_image.append(F.cross_entropy(logits, torch.arange(len(t), device=logits.device)))
    if not per_image:
        dev = teacher_masks[0].device if teacher_masks else None
        return torch.zeros((), device=dev)
    return torch.stack(per_image).mean()


# (R8)  L_rfc = 1/|J| sum_j -log exp(r^s_sigma(j).r^t_j/tau_f) /
#              (exp(r^s_sigma(j).r^t_j/tau_f) + sum_{k: c_k != c_j} exp(r^s_sigma(j).r^t_k/tau_f))
def rfc_loss(student_regions: torch.Tensor, teacher_regions_: torch.Tensor, classes: torch.Tensor,
             temperature: float = 0.1) -> torch.Tensor:
    """Region Feature Contrastive (R8): InfoNCE over region features of the mini-batch.

    Args:
        student_regions: (J, C) MAP features of the matched student queries (anchors).
        teacher_regions_: (J, C) MAP features of the teacher regions (detached); row j is the
            positive key of anchor j.
        classes: int64 (J,) the teacher regions' classes c_j.
        temperature: tau_f (s4kit: 0.1).

    Both sides are l2-normalised; the negatives of anchor j are the teacher regions of every
    image with c_k != c_j (same-class regions are left out as likely false negatives). Cost
    O(J^2 C) instead of the O(P^2 C) of pixel contrast. Returns 0 (no graph) when J = 0; an
    anchor without negatives contributes -log 1 = 0.
    """
    if len(classes) == 0:
        return torch.zeros((), device=student_regions.device)
    s = F.normalize(student_regions.float(), dim=-1)
    t = F.normalize(teacher_regions_.float(), dim=-1)
    logits = s @ t.T / temperature
    same = classes.unsqueeze(0) == classes.unsqueeze(1)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(classes), device=logits.device))


# (R9)  L_smc = 1/|C_u| sum_{c in C_u} (1 - D(clip_[0,1](S^s_c), sg [y^t = c]))
def smc_loss(student_sem: torch.Tensor, teacher_sem: torch.Tensor, valid: torch.Tensor,
             threshold: float = 0.7) -> torch.Tensor:
    """Semantic Mask Consistency (R9): Dice between student and teacher class-wise semantic masks.

    Args:
        student_sem: S^s (B, K, h, w) from ``semantic_inference`` (values in [0, N]; clipped
            to [0, 1] here).
        teacher_sem: S^t (B, K, h, w) (detached).
        valid: bool (B, h, w), pixels that count (not padding).
        threshold: gamma; a class c of image b is in C_u iff it is present in y^t = argmax_c
            S^t and the mean over its pixels of conf = max_c S^t / sum_c S^t is >= gamma.

    The target is the hard teacher mask [y^t = c] on valid pixels. Returns the mean over the
    (image, class) pairs in C_u, 0 (no graph) if there are none.
    """
    b, k = teacher_sem.shape[:2]
    t = teacher_sem.float().flatten(2)
    conf = t.max(1).values / t.sum(1).clamp_min(EPS)  # (B, P)
    y = t.argmax(1)
    v = valid.reshape(b, -1).float()
    onehot = F.one_hot(y, k).transpose(1, 2).float() * v.unsqueeze(1)  # (B, K, P)
    count = onehot.sum(-1)
    mean_conf = (onehot * conf.unsqueeze(1)).sum(-1) / count.clamp_min(1)
    keep = (count > 0) & (mean_conf >= threshold)
    if not keep.any():
        return torch.zeros((), device=student_sem.device)
    s = student_sem.float().flatten(2).clamp(0, 1) * v.unsqueeze(1)
    dice = 2 * (s * onehot).sum(-1) / (s.sum(-1) + count + EPS)
    return (1 - dice)[keep].mean()
