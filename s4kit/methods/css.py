"""``css``: collaborative supervision from the logit space and the representation space.

Source: Wang et al., "Space Engage: Collaborative Space Supervision for Contrastive-based
Semi-Supervised Semantic Segmentation", ICCV 2023 (arXiv 2307.09755), §3; official code
``github.com/WangChangqi98/CSS`` (``mix_label.py``, ``cross_label.py``,
``generalframeworks/networks/ddp_model.py``, ``generalframeworks/loss/loss.py``). The
equation numbers (C1-C9) are those of s4kit's reference notes; the functions live in
``s4kit.losses.css``. One iteration, on top of the ReCo substrate (``reco``):

1. teacher on the weak unlabeled view: logit-space labels y^lgt, q^lgt (max softmax) and
   representation-space labels from the cosine similarity to the EMA prototypes
   P^rep_c = softmax_c(cos(z', rho_c) / T), y^rep, q^rep                         (C2)
2. the label strategy:
   * ``mix`` (paper headline "CSS (mix)", default): y^ = y^lgt where y^lgt == y^rep, else
     255; L_u and the contrast use y^ (confidence q^lgt)                            (C6)
     L_u = mean_{p in B^_u} CE(z_p, y^_p), B^_u: y^_p != 255 and q^lgt_p >= delta_u   (Eq. 8)
   * ``cross`` ("CSS (crs.)"): L_u uses y^rep with q^rep, the contrast uses y^lgt with
     q^lgt; during the warm-up L_u uses y^lgt and q^lgt
3. CutMix / ClassMix of every map jointly, strong view, student forwards, L_s and L_u;
4. the similarity indicator j^rep = softmax_c(cos(z, rho_c) / T) of the *student*
   representations with the prototypes of the start of the iteration; hard anchors are
   valid pixels with j^rep_label < delta_s                                          (C3)
5. prototype update rho_c <- alpha rho_c + (1 - alpha) mean of the valid pixels of c,
   sums and counts all-reduced over DDP ranks                                      (C1)
6. L_c with the updated prototypes as positive keys                                (C7)

    L = L_s + lambda_u L_u + contrast_weight * lambda_c(t) * L_c                   (C8)

Paper values are the defaults. Where the official code differs, it is an option:

| option | default (paper / author) | official code |
|---|---|---|
| ``rep_temperature`` | 0.25 (author, CSS issue #5) | 0.5 (``--temp``; makes delta_s = 0.8 unreachable) |
| ``contrast_schedule`` | ``global_rampdown`` exp(-5 (t/T)^2) | ``epoch_rampdown_literal`` (off after 200 short epochs) |
| ``cross_warmup`` | 20 labelled-loader epochs (paper, README) | 0 |
| ``proto_source`` | ``student`` (code; the paper's Eq. 2 uses the teacher: ``teacher``) | ``student`` |
| ``proto_sync`` | ``global`` (all-reduce) | ``local_literal`` (updates per rank) |
| ``mix_rep_filter`` | ``none`` (code); ``paper`` adds q^rep >= delta_w to the contrast | ``none`` |
| ``mix_weighting`` | ``paper``: L_u = CE over the confident agreeing pixels (Eq. 8) | ``code``: per-image weight (confident pixels, agreeing or not) / (agreeing pixels), can exceed 1; ``agree``: s4kit's old weight (confident and agreeing) / (agreeing) |
| evaluation | ``eval.mode``: ``full`` images (VOC), ``sliding`` window (Cityscapes, paper) | ``crop``: one random crop of the crop size |

Not reproduced: ``torch.autograd.set_detect_anomaly`` and the rank-0 mixing partner (code
defects). A zero prototype (a class never seen) has cosine 0 to every pixel, as in the code.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .. import dist
from ..losses.contrast import flatten_pixels
from ..losses.css import (anchor_weights, class_sums, contrast_rampdown, css_contrast_loss, ema_prototypes,
                          max_rep_confidence, mix_labels, mix_unsupervised_loss, rep_distribution)
from ..losses.ramps import linear_rampup
from .base import IGNORE_INDEX, Method, downsample_labels, opt, register, require, upsample
from .reco import RecoOptions
from .steps import nearest, pseudo_label_logs, require_unlabeled, strong_mixed_view, unsupervised_ce


@dataclass
class CSSOptions(RecoOptions):
    """Options of ``css`` (paper / author values; see the module docstring for the code's)."""

    name: str = "css"
    strategy: Literal["mix", "cross"] = "mix"  # mix (headline)
    strong_threshold: float = 0.8  # delta_s on the similarity indicator (README, CLI)
    rep_temperature: float = opt(0.25, "(0, inf)")  # T of the rep-space softmax (author; code CLI 0.5)
    proto_momentum: float = opt(0.99, "[0, 1]")  # alpha_p
    proto_source: Literal["student", "teacher"] = "student"  # student (code) | teacher (paper Eq. 2)
    proto_sync: Literal["global", "local_literal"] = "global"  # global (all-reduce)
    mix_rep_filter: Literal["none", "paper"] = "none"  # none (code) | paper (contrast also needs q^rep >= delta_w)
    contrast_schedule: Literal["global_rampdown", "epoch_rampdown_literal", "constant"] = "global_rampdown"
    cross_warmup: int = opt(20, "[0, inf)")  # cross: L_u on logit labels this long (paper/README: 20 epochs; code: 0)
    cross_warmup_unit: Literal["epochs", "iters"] = "epochs"  # epochs: labelled-loader epochs
    # L_u on mix labels (strategy mix only; losses.css.mix_unsupervised_loss):
    #   paper (Eq. 8): plain CE over the sampled pixels (confident q^lgt >= delta_u and agreeing);
    #   code: the official per-image weight (confident pixels, agreeing or not) / (agreeing
    #         pixels), can exceed 1; agree: that weight with only agreeing confident pixels
    #         (s4kit before issue 14; reads unsup_loss). Changes the digits/css trajectory.
    mix_weighting: Literal["paper", "code", "agree"] = "paper"

    @classmethod
    def validate(cls, cfg) -> None:
        """``unsup_loss=masked`` is read in mix mode only with ``mix_weighting=agree``. Raises ``ConfigError``."""
        m = cfg.method
        if m.strategy == "mix" and m.mix_weighting != "agree":
            require(cfg, "method.unsup_loss", ("weighted",),
                    f"css strategy=mix with mix_weighting={m.mix_weighting} does not read it "
                    "(unsup_loss applies with mix_weighting=agree or strategy=cross)")


def label_spaces(out: dict, prototypes: torch.Tensor, temperature: float, size) -> dict[str, torch.Tensor]:
    """Pseudo-labels of both spaces from one forward's outputs (C2, C6).

    Args:
        out: network outputs ``logits`` (B, K, h, w) and ``rep`` (B, D, h, w).
        prototypes: (K, D); temperature: T; size: (H, W) of the crop.

    Returns int64 / float (B, H, W) maps ``y_logit, q_logit, y_rep, q_rep, y_mix``.
    """
    q_lgt, y_lgt = upsample(out["logits"].float(), size).softmax(1).max(1)
    q_rep, y_rep = rep_distribution(out["rep"], prototypes, temperature, size).max(1)
    return {"y_logit": y_lgt, "q_logit": q_lgt, "y_rep": y_rep, "q_rep": q_rep, "y_mix": mix_labels(y_lgt, y_rep)}


@register("css")
class CSS(Method):
    """CSS on the ReCo substrate; ``train_step`` returns ``loss_sup``, ``loss_unsup``,
    ``loss_contrast`` and diagnostics: ``pl_precision`` / ``pl_coverage`` of the labels L_u
    uses and, per label source, ``pl_precision_{logit,rep,mix}`` / ``pl_coverage_*`` (hidden
    ground truth only; confidence q^lgt for logit and mix, q^rep for rep, threshold
    ``confidence_threshold``); ``css_lambda_c``, ``css_agreement`` (share of unlabeled
    pixels where the spaces agree), ``css_hard_fraction`` (share of valid contrast pixels
    that are hard anchors), ``css_rep_confident`` (share with q^rep >= delta_u).

    Warns when delta_s (or, in cross mode, delta_u) exceeds the largest attainable rep-space
    confidence (C4).
    """

    Options = CSSOptions
    uses_unlabeled = True
    uses_representation = True
    find_unused_parameters = False

    def __init__(self, cfg):
        super().__init__(cfg)
        o = self.opts
        q_max = max_rep_confidence(o.rep_temperature, self.num_classes)
        problems = [f"every valid pixel is a hard anchor at delta_s={o.strong_threshold}"] \
            if q_max < o.strong_threshold else []
        if o.strategy == "cross" and q_max < o.confidence_threshold:
            problems.append(f"no pixel reaches delta_u={o.confidence_threshold}, so L_u is 0 after the warm-up")
        if problems:
            warnings.warn(f"css: rep_temperature={o.rep_temperature} with {self.num_classes} classes caps the "
                          f"rep-space confidence at {q_max:.3f} (C4): " + "; ".join(problems), stacklevel=2)
        self.make_teacher()
        self.register_buffer("proto", torch.zeros(self.num_classes, int(cfg.model.rep_dim)))
        self.register_buffer("proto_seen", torch.zeros(self.num_classes, dtype=torch.bool))
        self._epoch_length: int | None = None

    # -- interface -----------------------------------------------------------------------
    def prototypes(self) -> torch.Tensor:
        """The EMA prototypes (K, D); NaN rows for classes never observed."""
        return self.proto.masked_fill(~self.proto_seen.unsqueeze(1), float("nan"))

    @torch.no_grad()
    def pseudo_labels(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The labels L_u trains on, from the evaluation model: mix labels with confidence
        q^lgt (0 where the spaces disagree), or, in cross mode, y^rep with q^rep."""
        s = label_spaces(self.forward_eval(image), self.proto, self.opts.rep_temperature, image.shape[-2:])
        if self.opts.strategy == "cross":
            return s["y_rep"], s["q_rep"]
        return s["y_mix"], s["q_logit"].masked_fill(s["y_mix"] == IGNORE_INDEX, 0.0)

    @torch.no_grad()
    def snapshot_extras(self, outputs: dict) -> dict[str, torch.Tensor]:
        """``indicator``: j^rep of the predicted class (C3); ``anchor_weight``: its weight as
        an anchor relative to uniform sampling (``anchor_weights``, predicted classes as
        labels); both (B, h, w) on the head grid."""
        rep = outputs["rep"].float()
        j = rep_distribution(rep, self.proto, self.opts.rep_temperature)
        pred = F.interpolate(outputs["logits"].float(), size=tuple(rep.shape[-2:]), mode="bilinear",
                             align_corners=True).argmax(1)
        valid = torch.ones_like(pred, dtype=torch.bool)
        return {"indicator": j.gather(1, pred.unsqueeze(1)).squeeze(1),
                "anchor_weight": anchor_weights(j, pred, valid, self.opts.strong_threshold)}

    @torch.no_grad()
    def final_metrics(self, unlabeled_batches) -> dict:
        """Per label source (``logit``, ``rep``, ``mix``), of the final teacher on the
        unlabeled train images with hidden ground truth, in percent:
        ``pseudo_label_precision_<src>`` and ``pseudo_label_coverage_<src>`` (as in
        ``train_step``) and ``pseudo_label_miou_<src>``, the mIoU of the pixels above the
        threshold against the ground truth (the paper's Table 5 measure, "pseudo-label
        mIoU after sampling"). Empty without hidden ground truth."""
        if unlabeled_batches is None:
            return {}
        from ..metrics import confusion_matrix, miou

        k = self.num_classes
        cms = {name: torch.zeros(k, k, dtype=torch.int64) for name in ("logit", "rep", "mix")}  # same keys on every rank
        n_valid = torch.zeros((), dtype=torch.int64)
        for batch in unlabeled_batches:
            if "hidden_mask" not in batch:
                return {}
            s = label_spaces(self.forward_eval(batch["image"]), self.proto, self.opts.rep_temperature,
                             batch["image"].shape[-2:])
            hidden = batch["hidden_mask"]
            n_valid += int((hidden != IGNORE_INDEX).sum())
            for name, (y, q) in self._sources(s).items():
                kept = hidden.masked_fill(q < self.opts.confidence_threshold, IGNORE_INDEX)
                cms[name] += confusion_matrix(y, kept, k)
        n = float(dist.all_reduce_sum(n_valid.to(self.proto.device)))
        out = {}
        for name, cm in cms.items():
            cm = dist.all_reduce_sum(cm.to(self.proto.device)).cpu()
            kept = float(cm.sum())
            out[f"pseudo_label_precision_{name}"] = 100 * float(cm.diag().sum()) / kept if kept else float("nan")
            out[f"pseudo_label_coverage_{name}"] = 100 * kept / n if n else float("nan")
            out[f"pseudo_label_miou_{name}"] = miou(cm) if kept else float("nan")
        return out

    # -- pieces ---------------------------------------------------------------------------
    @staticmethod
    def _sources(s: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(labels, confidence) of the three label sources; mix pixels that disagree get q = 0."""
        return {"logit": (s["y_logit"], s["q_logit"]), "rep": (s["y_rep"], s["q_rep"]),
                "mix": (s["y_mix"], s["q_logit"].masked_fill(s["y_mix"] == IGNORE_INDEX, 0.0))}

    def epoch_length(self) -> int:
        """Iterations per labelled-loader epoch: floor(n_labeled / global labeled batch), >= 1; the
        global batch counts every process and accumulated micro-batch (``train.global_batch``)."""
        if self._epoch_length is None:
            from ..config import accumulation_steps
            from ..data.loaders import n_images

            t = self.cfg.train
            per_iter = int(t.batch_labeled) * dist.world_size() * accumulation_steps(
                t.global_batch, t.batch_labeled, dist.world_size())
            self._epoch_length = max(1, n_images(self.cfg, "labeled") // per_iter)
        return self._epoch_length

    def warmup_iters(self) -> int:
        """Iterations of the cross-mode warm-up (L_u on logit labels)."""
        o = self.opts
        return o.cross_warmup * (self.epoch_length() if o.cross_warmup_unit == "epochs" else 1)

    def lambda_c(self) -> float:
        """contrast_weight * linear ramp-up (``contrast_warmup``) * ramp-down schedule (C9)."""
        o = self.opts
        ramp = linear_rampup(self.iteration, o.contrast_warmup)
        epoch = self.epoch_length() if o.contrast_schedule == "epoch_rampdown_literal" else 1
        return o.contrast_weight * ramp * contrast_rampdown(self.iteration, self.total_iters, o.contrast_schedule,
                                                            epoch)

    @torch.no_grad()
    def update_prototypes(self, rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        """(C1) from representations (B, D, h, w), labels and validity (B, h, w); the class
        sums and counts are all-reduced over ranks with ``proto_sync=global``."""
        with torch.autocast(rep.device.type, enabled=False):
            reps, lab = flatten_pixels(rep.float(), labels, valid)
            sums, counts = class_sums(reps, lab, self.num_classes)
            if self.opts.proto_sync == "global":
                dist.all_reduce_sum(sums)
                dist.all_reduce_sum(counts)
            new, seen = ema_prototypes(self.proto, self.proto_seen, sums, counts, self.opts.proto_momentum)
        self.proto.copy_(new)
        self.proto_seen.copy_(seen)

    # -- the iteration --------------------------------------------------------------------
    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        o, u = self.opts, require_unlabeled(self, unlabeled)["image"]
        size = u.shape[-2:]
        protos_before = self.proto.clone()
        with torch.no_grad():
            # 1. both label spaces from the teacher on the weak view (C2, C6)
            t_out = self.teacher_forward(u)
            s = label_spaces(t_out, protos_before, o.rep_temperature, size)
            if "valid" in unlabeled:  # crop padding carries no pseudo-label
                pad = ~unlabeled["valid"]
                for k in ("y_logit", "y_rep", "y_mix"):
                    s[k] = s[k].masked_fill(pad, IGNORE_INDEX)
                for k in ("q_logit", "q_rep"):
                    s[k] = s[k].masked_fill(pad, 0.0)
            sources = self._sources(s)
            logs = {}
            for name, (y, q) in sources.items():
                logs.update(pseudo_label_logs(y, q, unlabeled, o.confidence_threshold, f"_{name}",
                                              ("precision", "coverage")))
            # 2. the label strategy: which labels train L_u, which the contrast
            if o.strategy == "mix":
                u_label, u_conf = sources["mix"]
                c_label, c_conf = sources["mix"]
            else:
                warm = self.iteration < self.warmup_iters()
                u_label, u_conf = sources["logit"] if warm else sources["rep"]
                c_label, c_conf = sources["logit"]
                logs["css_cross_warmup"] = float(warm)
            logs.update(pseudo_label_logs(u_label, u_conf, unlabeled, o.confidence_threshold))
        # 3. joint mixing of every map (S2), strong view; L_s and L_u
        u_strong, c_label_m, c_conf_m, u_label_m, u_conf_m, q_rep_m, q_lgt_m = strong_mixed_view(
            self, u, c_label, c_conf, u_label, u_conf, s["q_rep"], s["q_logit"])
        out_l = self.student(self.augment_labeled(labeled["image"]))
        out_u = self.student(u_strong)
        logits_u = upsample(out_u["logits"], size)
        if o.strategy == "mix":  # paper Eq. 8 / the code's weight / agreeing-only weight (mix_weighting)
            loss_u = mix_unsupervised_loss(logits_u, u_label_m, q_lgt_m, o.confidence_threshold, o.mix_weighting,
                                           o.unsup_loss)
        else:
            loss_u = unsupervised_ce(o.unsup_loss, logits_u, u_label_m, u_conf_m, o.confidence_threshold)
        losses = {"loss_sup": self.sup_loss(out_l["logits"], labeled["mask"]), "loss_unsup": o.unsup_weight * loss_u}

        # 4. contrast inputs on the head grid; the indicator with the prototypes before the update (C3)
        grid = out_l["rep"].shape[-2:]
        y_l = downsample_labels(labeled["mask"], grid)
        y_u = downsample_labels(c_label_m, grid)
        near = lambda m: nearest(m, grid)  # noqa: E731
        valid_u = (near(c_conf_m) >= o.weak_threshold) & (y_u != IGNORE_INDEX)
        if o.strategy == "mix" and o.mix_rep_filter == "paper":
            valid_u &= near(q_rep_m) >= o.weak_threshold
        rep = torch.cat([out_l["rep"], out_u["rep"]]).float()
        labels, valid = torch.cat([y_l, y_u]), torch.cat([y_l != IGNORE_INDEX, valid_u])
        with torch.no_grad(), torch.autocast(rep.device.type, enabled=False):
            indicator = rep_distribution(rep.detach(), protos_before, o.rep_temperature)
        # 5. prototype update (C1): student representations (code) or the teacher's (paper Eq. 2)
        if o.proto_source == "student":
            self.update_prototypes(rep.detach(), labels, valid)
        else:
            with torch.no_grad():
                t_rep_l = self.teacher_forward(labeled["image"])["rep"]
                y_t = downsample_labels(c_label, grid)
                valid_t = (near(c_conf) >= o.weak_threshold) & (y_t != IGNORE_INDEX)
            self.update_prototypes(torch.cat([t_rep_l, t_out["rep"]]), torch.cat([y_l, y_t]),
                                   torch.cat([y_l != IGNORE_INDEX, valid_t]))
        # 6. the contrast with the updated prototypes as positive keys (C7), weighted (C8)
        loss_c = css_contrast_loss(rep, labels, valid, indicator, self.proto, o.strong_threshold, o.temperature,
                                   o.num_queries, o.num_negatives, o.literal_denominator, o.sampling)
        lam = self.lambda_c()
        losses["loss_contrast"] = lam * loss_c
        with torch.no_grad():
            keep = valid & (labels != IGNORE_INDEX)
            j = indicator.gather(1, labels.masked_fill(~keep, 0).unsqueeze(1)).squeeze(1)
            n_valid = max(int(keep.sum()), 1)
            in_crop = unlabeled["valid"] if "valid" in unlabeled else torch.ones_like(s["y_logit"], dtype=torch.bool)
            n_crop = max(int(in_crop.sum()), 1)
            logs.update({"css_lambda_c": lam,
                         "css_hard_fraction": 100.0 * int((keep & (j < o.strong_threshold)).sum()) / n_valid,
                         "css_agreement": 100.0 * int((in_crop & (s["y_logit"] == s["y_rep"])).sum()) / n_crop,
                         "css_rep_confident": 100.0 * int((in_crop & (s["q_rep"] >= o.confidence_threshold)).sum())
                         / n_crop})
        losses.update(logs)
        return losses
