"""``rc2l``: region-level contrastive and consistency learning on a mask-classification head;
``supervised_maskformer``: the same head trained on labeled images only.

Source: Zhang, Wu, Ding, Zhao, Guo, "Region-level Contrastive and Consistency Learning for
Semi-Supervised Semantic Segmentation", IJCAI 2022 (arXiv 2204.13314). No code is public
and the paper's method section is not available: this is the first public implementation
and a *reconstruction* (docs/methods/rc2l.md §4-§9). What the paper states: an EMA teacher,
a MaskFormer-style head (queries, mask embeddings, pixel-decoder feature F, region
features by mask average pooling), and four losses RMC, RFC, RCC, SMC. Everything else is
s4kit's choice, each an option:

    L = L_sup + lambda_u (l_rcc L_rcc + l_rmc L_rmc + l_rfc L_rfc + l_smc L_smc)      (R10)

* L_sup: MaskFormer's set loss (R5) with deep supervision over every decoder layer
  (``losses.region.set_loss``), on the head grid (labels nearest-downsampled).
* Views (D6): the EMA teacher sees the weak unlabeled view u, the student a photometric-only
  strong view of the *same* u, so teacher and student masks stay pixel-aligned. Mixing
  (CutMix/ClassMix) is not applied: the config must say ``augment.mix=none``.
* Teacher regions (D4, T1): confident teacher queries (``region_threshold`` gamma = 0.7 on
  the class probability, not ∅, non-empty binary mask at ``mask_threshold`` 0.5).
* Correspondence (D5): ``matching=hungarian`` (M1, default): the MaskFormer cost (R4) between
  the student queries and the teacher regions as pseudo ground truth; ``matching=index``
  (M2): student query i <-> teacher query i.
* RCC (R6): CE of the student class logits against the matched teacher classes, ∅ elsewhere,
  w_∅ = 0.1 (``rcc_unmatched=noobject``, reference D7). ``rcc_unmatched=ignore`` leaves
  the unmatched student queries out: early in training the teacher's only confident region
  is often the background, and ∅ targets then teach the student's digit queries on
  unlabeled images to say "no object". ``rcc_unmatched=teacher``: ∅ only where the
  teacher's query of the same index says ∅ with probability >= gamma, else left out.
* ``merge_regions``: teacher regions of one class in one image merge into one (union), the
  format of semantic ground truth (one segment per class); off by default (T1 keeps queries).
* RMC (R7): Dice-InfoNCE of matched student masks vs the image's teacher masks, tau_m = 0.1.
* RFC (R8): InfoNCE of MAP region features (student: own soft mask; teacher: its
  ``teacher_mask`` = hard (default) or soft mask) vs batch teacher regions of other classes,
  tau_f = 0.1, optional projection MLP g (``projection=true``, 256 -> 256 -> 128; default off).
* SMC (R9): Dice of the clipped student semantic masks vs the hard teacher masks over
  classes with mean confidence >= ``smc_threshold``.
* The unsupervised losses use the last decoder layer only (deep supervision is applied to
  L_sup only): s4kit's choice.
* The teacher is MeanTeacher's (alpha 0.99, ReCo's BN handling); evaluation uses it.

Diagnostics in ``log.csv``: ``regions`` (mean N^t per unlabeled image) and the teacher's
pseudo-label precision/coverage (``pl_*``, from the normalised semantic masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.region import (hungarian_match, mask_average_pool, matching_cost, merge_same_class, rcc_loss, rfc_loss,
                             rmc_loss,
                             set_loss, smc_loss, teacher_regions)
from ..losses.ramps import linear_rampup
from .base import Method, downsample_labels, opt, register, require, upsample
from .meanteacher import MeanTeacherOptions
from .steps import pseudo_label_logs, require_unlabeled, teacher_pseudo_labels
from .supervised import SupervisedOptions


def maskformer_supervised_loss(out: dict, labels: torch.Tensor, opts) -> torch.Tensor:
    """L_sup (R5) summed over the last and (if ``opts.deep_supervision``) every earlier decoder layer.

    Args: ``out`` a ``MaskFormerHead`` output dict; labels int64 (B, H, W), 255 = ignore.
    ``opts.mask_resolution``: ``head`` (default, docs/methods/rc2l.md §12: labels
    nearest-downsampled to the H/4 mask grid) or ``input`` (mask logits bilinearly upsampled
    to the labels, as MaskFormer does; costs N x H x W per image). Returns a scalar; raises
    ``ValueError`` for an unknown ``mask_resolution``.
    """
    if opts.mask_resolution not in ("head", "input"):
        raise ValueError(f"method.mask_resolution={opts.mask_resolution!r}: expected head or input")
    y = downsample_labels(labels, out["pred_masks"].shape[-2:]) if opts.mask_resolution == "head" else labels
    layers = [(out["pred_logits"], out["pred_masks"])] + (list(out["aux"]) if opts.deep_supervision else [])
    total = 0.0
    for cls, masks in layers:
        if opts.mask_resolution == "input":
            masks = upsample(masks, labels.shape[-2:])
        parts = set_loss(cls, masks, y, opts.no_object_weight, opts.class_weight, opts.focal_weight, opts.dice_weight)
        total = total + parts["ce"] + parts["focal"] + parts["dice"]
    return total


@dataclass
class SupervisedMaskFormerOptions(SupervisedOptions):
    """Options of ``supervised_maskformer``: MaskFormer's loss weights (docs/methods/rc2l.md §7)."""

    name: str = "supervised_maskformer"
    no_object_weight: float = opt(0.1, "[0, inf)")  # w_∅ (MaskFormer NO_OBJECT_WEIGHT)
    class_weight: float = opt(1.0, "[0, inf)")  # lambda_cls (matching cost and loss)
    focal_weight: float = opt(20.0, "[0, inf)")  # lambda_focal
    dice_weight: float = opt(1.0, "[0, inf)")  # lambda_dice
    deep_supervision: bool = True
    mask_resolution: Literal["head", "input"] = "head"  # where the set loss compares masks with labels
    unread: ClassVar[tuple[str, ...]] = ("sup_loss", "ohem_thresh", "ohem_min_kept")  # the set loss replaces them

    @classmethod
    def validate(cls, cfg) -> None:
        """``model.name`` must be ``maskformer``; raises ``ConfigError``."""
        require(cfg, "model.name", ("maskformer",), f"{cfg.method.name} needs a mask-classification network")


@register("supervised_maskformer")
class SupervisedMaskFormer(Method):
    """Labeled images only, MaskFormer set loss (R5) on the mask-classification head.

    ``train_step(labeled, unlabeled=None)`` returns ``{"loss_sup": scalar}``.
    """

    Options = SupervisedMaskFormerOptions

    def train_step(self, labeled: dict, unlabeled: dict | None = None) -> dict:
        out = self.student(self.augment_labeled(labeled["image"]))
        return {"loss_sup": maskformer_supervised_loss(out, labeled["mask"], self.opts)}


@dataclass
class RC2LOptions(MeanTeacherOptions):
    """Options of ``rc2l``; every value is s4kit's reconstruction (docs/methods/rc2l.md §4, §10)."""

    name: str = "rc2l"
    no_object_weight: float = opt(0.1, "[0, inf)")
    class_weight: float = opt(1.0, "[0, inf)")
    focal_weight: float = opt(20.0, "[0, inf)")
    dice_weight: float = opt(1.0, "[0, inf)")
    deep_supervision: bool = True
    mask_resolution: Literal["head", "input"] = "head"  # set loss only; the region losses use the head grid
    region_threshold: float = opt(0.7, "[0, 1]")  # gamma: teacher query confidence (T1)
    mask_threshold: float = opt(0.5, "[0, 1]")  # binarisation of teacher masks
    matching: Literal["hungarian", "index"] = "hungarian"  # hungarian (M1) | index (M2)
    teacher_mask: Literal["hard", "soft"] = "hard"  # the teacher mask in RMC and in the teacher-side MAP
    mask_temperature: float = opt(0.1, "(0, inf)")  # tau_m
    feature_temperature: float = opt(0.1, "(0, inf)")  # tau_f
    projection: bool = False  # RFC projection MLP g (E -> E -> 128)
    smc_threshold: float = opt(0.7, "[0, 1]")  # gamma for C_u in SMC
    # RCC target of student queries matched to no region: noobject (D7) | ignore | teacher
    rcc_unmatched: Literal["noobject", "ignore", "teacher"] = "noobject"
    merge_regions: bool = False  # one teacher region per class and image (union of the same-class queries)
    rcc_weight: float = opt(1.0, "[0, inf)")
    rmc_weight: float = opt(1.0, "[0, inf)")
    rfc_weight: float = opt(1.0, "[0, inf)")
    smc_weight: float = opt(1.0, "[0, inf)")
    unsup_warmup: int = opt(0, "[0, inf)")  # lambda_u ramps up linearly over this many iterations (0: off)
    # the set loss replaces L_s and its OHEM; the region losses replace L_u
    unread: ClassVar[tuple[str, ...]] = ("sup_loss", "ohem_thresh", "ohem_min_kept", "unsup_loss")

    @classmethod
    def validate(cls, cfg) -> None:
        """``model.name`` must be ``maskformer`` and ``augment.mix`` ``none`` (D6: the views
        stay aligned); raises ``ConfigError``."""
        require(cfg, "model.name", ("maskformer",), "rc2l needs a mask-classification network")
        require(cfg, "augment.mix", ("none",), "rc2l does not read this option: it mixes nothing")


@register("rc2l")
class RC2L(Method):
    """Mean teacher with RC²L's four region-level losses (see the module docstring).

    ``train_step`` returns ``loss_sup``, ``loss_rcc``, ``loss_rmc``, ``loss_rfc``,
    ``loss_smc`` (already weighted by lambda_u and their own weights), ``regions`` and, with
    hidden ground truth, ``pl_*``. Raises ``RuntimeError`` without an unlabeled batch.
    """

    Options = RC2LOptions
    uses_unlabeled = True
    uses_representation = True
    find_unused_parameters = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.make_teacher()
        self.projection = None
        if self.opts.projection:
            e = cfg.model.rep_dim
            # g is trained with the student; the teacher side uses the same g under no_grad
            # (an EMA copy g_t would be the alternative; s4kit keeps one g for simplicity)
            self.projection = nn.Sequential(nn.Linear(e, e), nn.ReLU(inplace=True), nn.Linear(e, 128))

    def project(self, r: torch.Tensor) -> torch.Tensor:
        """g(r) if the projection MLP is enabled, else r."""
        return self.projection(r) if self.projection is not None else r

    def region_losses(self, out_s: dict, out_t: dict, valid: torch.Tensor) -> dict:
        """RCC, RMC, RFC, SMC (R6-R9) between student and teacher outputs on aligned views.

        Args: ``out_s`` / ``out_t`` ``MaskFormerHead`` outputs (teacher detached), ``valid``
        bool (B, h, w) on the mask grid. Returns the unweighted losses and ``regions``.
        """
        o = self.opts
        cls_s, m_s, pix_s = out_s["pred_logits"], out_s["pred_masks"], out_s["rep"]
        cls_t, m_t, pix_t = out_t["pred_logits"], out_t["pred_masks"], out_t["rep"]
        b, n, kp1 = cls_s.shape
        k = kp1 - 1
        # unmatched student queries: ∅ (reference D7, MaskFormer's rule), left out of RCC, or ∅
        # only where the teacher's query of the same index is confidently ∅ (else left out)
        if o.rcc_unmatched == "noobject":
            targets = torch.full((b, n), k, dtype=torch.long, device=cls_s.device)
        elif o.rcc_unmatched == "ignore":
            targets = torch.full((b, n), -1, dtype=torch.long, device=cls_s.device)
        else:
            empty = cls_t.float().softmax(-1)[..., k] >= o.region_threshold
            targets = torch.where(empty, k, -1).to(torch.long)
        s_masks, t_masks, s_feats, t_feats, classes = [], [], [], [], []
        n_regions = 0
        for i in range(b):
            v = valid[i].reshape(-1)
            ml_s = m_s[i].reshape(n, -1)
            idx, c, hard, soft = teacher_regions(cls_t[i], m_t[i].reshape(n, -1), v, o.region_threshold,
                                                 o.mask_threshold)
            if len(idx) and o.merge_regions:
                conf = cls_t[i, idx].float().softmax(-1)[:, :k].max(-1).values
                idx, c, hard, soft = merge_same_class(idx, c, hard, soft, conf)
            n_regions += len(idx)
            if len(idx) == 0:
                continue
            t_mask = hard if o.teacher_mask == "hard" else soft
            if o.matching == "hungarian":
                with torch.no_grad():
                    cost = matching_cost(cls_s[i].detach(), ml_s[:, v].detach(), c, hard[:, v], o.class_weight,
                                         o.focal_weight, o.dice_weight)
                rows, cols = hungarian_match(cost)
                sigma = rows  # cols = arange(N^t) since N >= N^t
            else:
                sigma = idx
            targets[i, sigma] = c
            sm = ml_s[sigma].float().sigmoid() * v
            s_masks.append(sm)
            t_masks.append(t_mask)
            s_feats.append(mask_average_pool(pix_s[i].reshape(pix_s.shape[1], -1).float(), sm))
            t_feats.append(mask_average_pool(pix_t[i].reshape(pix_t.shape[1], -1).float(), t_mask))
            classes.append(c)
        losses = {"rcc": rcc_loss(cls_s, targets, o.no_object_weight),
                  "rmc": rmc_loss(s_masks, t_masks, o.mask_temperature) if s_masks else cls_s.new_zeros(()),
                  "smc": smc_loss(out_s["sem"], out_t["sem"], valid, o.smc_threshold)}
        if classes:
            r_s = self.project(torch.cat(s_feats))
            with torch.no_grad():
                r_t = self.project(torch.cat(t_feats))
            losses["rfc"] = rfc_loss(r_s, r_t, torch.cat(classes), o.feature_temperature)
        else:
            losses["rfc"] = cls_s.new_zeros(())
        losses["regions"] = n_regions / max(b, 1)
        return losses

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        o, u = self.opts, require_unlabeled(self, unlabeled)["image"]
        # 1. the teacher's regions come from its outputs on the weak view (per-pixel labels only for the log)
        t_out, _, pseudo, conf = teacher_pseudo_labels(self, unlabeled)
        logs = pseudo_label_logs(pseudo, conf, unlabeled, o.confidence_threshold)
        with torch.no_grad():
            u_strong = self.strong(u)  # 2. photometric only, no mixing: masks stay aligned (D6)
        # 3. student on both batches; L_sup (R5) on the labeled one
        out_l = self.student(self.augment_labeled(labeled["image"]))
        out_u = self.student(u_strong)
        grid = out_u["pred_masks"].shape[-2:]
        if "valid" in unlabeled:
            valid = F.interpolate(unlabeled["valid"].unsqueeze(1).float(), size=tuple(grid), mode="nearest")[:, 0] > 0.5
        else:
            valid = torch.ones((u.shape[0], *grid), dtype=torch.bool, device=u.device)
        # 4. the four region losses (R6-R9) between student and teacher regions
        region = self.region_losses(out_u, {key: (val.detach() if torch.is_tensor(val) else val)
                                            for key, val in t_out.items()}, valid)
        # 5. L = L_sup + lambda_u(t) (l_rcc L_rcc + l_rmc L_rmc + l_rfc L_rfc + l_smc L_smc)    (R10)
        lam = o.unsup_weight * linear_rampup(self.iteration, o.unsup_warmup)
        losses = {"loss_sup": maskformer_supervised_loss(out_l, labeled["mask"], o),
                  "loss_rcc": lam * o.rcc_weight * region["rcc"], "loss_rmc": lam * o.rmc_weight * region["rmc"],
                  "loss_rfc": lam * o.rfc_weight * region["rfc"], "loss_smc": lam * o.smc_weight * region["smc"],
                  "regions": float(region["regions"])}
        losses.update(logs)
        return losses

    def snapshot_extras(self, outputs: dict) -> dict[str, torch.Tensor]:
        """``region``: per pixel, the index of the query with the largest mask logit (B, h, w)."""
        return {"region": outputs["pred_masks"].argmax(1).float()}
