"""``prcl``: the mean teacher plus probabilistic representation contrastive learning.

Source: Xie et al., "Boosting Semi-Supervised Semantic Segmentation with Probabilistic
Representations", AAAI 2023 (arXiv 2210.14670) and "PRCL: Probabilistic Representation
Contrastive Learning for Semi-Supervised Semantic Segmentation", IJCV 2024 (arXiv
2402.18117); docs/methods/prcl.md (official code ``Haoyu-Xie/PRCL`` @ d8829da, which
implements the AAAI version). ReCo with every pixel a diagonal Gaussian z = N(mu, sigma^2):

    mu      = the representation head's output ``rep``            (B, D, h, w)
    sigma^2 = a probability head on the decoder feature ``feat``  (B, D, h, w)       (P1)
    s(z_i, z_j): mutual likelihood score instead of cosine                             (P2)
    rho_c: product-of-Gaussians prototypes, gathered over DDP ranks                    (P4-P5)
    L = L_s + L_u + lambda_c(t) L_prcl,  lambda_c(t) = w exp(-5 (t/T)^2)               (P6-P9)

Design choices (all configurable, see ``PRCLOptions``):

* The probability head is a ``ProbabilisticNet`` wrapper around the student, so DDP
  averages its gradients; it has its own parameter group (``sigma_lr``: "soft freezing",
  5e-5 against 3.2e-3 in the code; same poly schedule). The EMA teacher is a copy of the
  wrapped student, so it carries an EMA of the head: the official teacher has none, and
  nothing in training reads the teacher's sigma^2; s4kit uses it only for
  ``final_metrics`` (sigma2_error_auroc) and latent snapshots.
* The probability head runs once on the labeled and unlabeled features concatenated (one
  BatchNorm batch, as the official ``ddp_model.py`` L73); ``sigma_head_batch=per_stream``
  runs it inside each student forward instead (per-stream BatchNorm statistics).
* Defaults are the official code: no variance term (``variance_reg=none``), batch
  prototypes (``version=aaai``), tau = 100, delta_s = 0.8, delta_w = 0.7, delta_u = 0.97,
  lambda_c ramping down over the whole run. As in s4kit's ReCo, classes with no hard anchor
  do not count in the loss denominator (``literal_denominator=true`` restores the code).
* Options the official code lacks, off by default (docs/methods/prcl.md §6, §10, both
  [interpretation]): ``variance_reg=custom`` (a KL-to-unit-Gaussian term on the anchors'
  sigma^2, weight ``variance_reg_weight``) and ``version=ijcv_interpretation`` (global
  distribution prototypes: a precision-weighted running fusion of the batch prototypes
  with forgetting factor ``gdp_momentum``, used as positives and for negative-class
  sampling, plus ``virtual_negatives`` per anchor drawn from them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .. import dist
from ..losses.prcl import prcl_loss, prototypes_from_stats, rampdown_weight, variance_regularizer
from ..models.probability import ProbabilisticNet, ProbabilityHead
from .base import IGNORE_INDEX, Method, opt, register, unwrap, upsample
from .meanteacher import MeanTeacherOptions
from .steps import contrast_targets, mean_teacher_step


@dataclass
class PRCLOptions(MeanTeacherOptions):
    """Options of ``prcl`` (docs/methods/prcl.md §13); defaults are the official code's values."""

    name: str = "prcl"
    weak_threshold: float = opt(0.7, "[0, 1]")  # delta_w: pseudo-label validity for the contrast
    strong_threshold: float = opt(0.8, "[0, 1]")  # delta_s: hard-anchor cut
    temperature: float = opt(100.0, "(0, inf)")  # tau, the divisor of the MLS
    num_queries: int = opt(256, "[1, inf)")  # Q anchors per class
    num_negatives: int = opt(512, "[1, inf)")  # M_k negatives per anchor
    contrast_weight: float = opt(1.0, "[0, inf)")  # w: lambda_c at t = 0
    contrast_schedule: Literal["rampdown", "constant"] = "rampdown"  # rampdown: w exp(mult (t/T)^2) (P9); constant: w
    rampdown_mult: float = opt(-5.0, "(-inf, 0]")
    sigma_lr: float = opt(5.0e-5, "(0, inf)")  # peak lr of the probability head (its lr_mult = sigma_lr / optim.lr)
    sigma_head_input: Literal["feat", "rep"] = "feat"  # feat (code: raw decoder concatenation) | rep (the mean mu)
    # joint (code, ddp_model.py L73): the probability head runs once on the labeled and unlabeled
    # features concatenated, one BatchNorm batch; per_stream: inside each student forward, BN
    # statistics per stream (s4kit before issue 14). Changes the digits/prcl trajectory.
    sigma_head_batch: Literal["joint", "per_stream"] = "joint"
    variance_reg: Literal["none", "custom"] = "none"  # custom: [interpretation], losses.prcl.variance_regularizer
    variance_reg_weight: float = opt(0.01, "[0, inf)")
    version: Literal["aaai", "ijcv_interpretation"] = "aaai"  # aaai: batch prototypes (code); ijcv: global + VNs
    gdp_momentum: float = opt(0.99, "[0, 1]")  # forgetting factor of the global prototypes' accumulated precision
    virtual_negatives: int = opt(0, "[0, inf)")  # per anchor, ijcv_interpretation only
    literal_denominator: bool = False  # the code counts classes without hard anchors in (P7)
    # how anchors and keys are drawn (losses.contrast.hard_anchor_contrast): loop over classes in the
    # official order (what the equivalence harness replays) | batched: one draw, same distribution
    sampling: Literal["loop", "batched"] = "loop"


@register("prcl")
class PRCL(Method):
    """Mean teacher + PRCL: ``train_step`` returns ``loss_sup``, ``loss_unsup``,
    ``loss_contrast`` (and ``loss_var`` with ``variance_reg=custom``).

    Diagnostics in ``train_step``'s output: ``contrast_lambda`` (lambda_c of this step),
    ``sigma2_mean`` (mean student sigma^2 on the unlabeled strong view), ``pl_*`` with hidden
    ground truth.
    """

    Options = PRCLOptions
    uses_unlabeled = True
    uses_representation = True
    find_unused_parameters = False

    def __init__(self, cfg):
        super().__init__(cfg)
        o = self.opts
        net = self.student
        cin = net.feat_channels if o.sigma_head_input == "feat" else net.rep_dim
        self.student = ProbabilisticNet(net, ProbabilityHead(cin, net.rep_dim), o.sigma_head_input,
                                        o.sigma_head_batch)  # (P1)
        self.make_teacher()
        K, D = self.num_classes, net.rep_dim
        # global distribution prototypes (P10 with forgetting): accumulated precision and
        # precision-weighted means; always tracked (they are what ``prototypes()`` shows),
        # used by the loss only with version=ijcv_interpretation
        self.register_buffer("gdp_precision", torch.zeros(K, D))
        self.register_buffer("gdp_weighted", torch.zeros(K, D))

    # -- optimiser ---------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Encoder (lr_mult 1), decoder and heads (``optim.head_lr_mult``), probability head
        (lr_mult = ``sigma_lr / optim.lr``: the official separate optimiser at 5e-5)."""
        net = unwrap(self.student)
        named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        enc = [p for n, p in named if n.startswith("net.encoder.")]
        sig = [p for n, p in named if n.startswith("sigma_head.")]
        rest = [p for n, p in named if not n.startswith(("net.encoder.", "sigma_head."))]
        return [{"params": enc, "lr_mult": 1.0, "name": "encoder"},
                {"params": rest, "lr_mult": float(self.cfg.optim.head_lr_mult), "name": "decoder"},
                {"params": sig, "lr_mult": float(self.opts.sigma_lr) / float(self.cfg.optim.lr), "name": "sigma_head"}]

    # -- the loss ------------------------------------------------------------------------------
    def contrast_lambda(self) -> float:
        """lambda_c at ``self.iteration`` (P9 over the run's ``total_iters``, or constant)."""
        o = self.opts
        if o.contrast_schedule == "constant":
            return float(o.contrast_weight)
        return float(o.contrast_weight) * rampdown_weight(self.iteration, self.total_iters, o.rampdown_mult)

    def global_prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_G, sigma2_G)`` (K, D) from the running statistics; NaN rows for unseen classes."""
        return prototypes_from_stats(self.gdp_precision, self.gdp_weighted)

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        o = self.opts
        # 1-3. the mean teacher: pseudo-labels on the weak view, mixed strong view, L_s and lambda_u L_u (S1-S4);
        # the student's outputs carry every pixel as a Gaussian N(mu = rep, sigma^2) (P1)
        step = mean_teacher_step(self, labeled, unlabeled)
        out_l, out_u, losses = step.out_l, step.out_u, step.losses
        # 4. the probabilistic contrast (P2-P8) on the head grid, ground truth + pseudo-labels with q >= delta_w
        labels, valid = contrast_targets(labeled["mask"], step.pseudo, step.confidence, out_l["rep"].shape[-2:],
                                         o.weak_threshold)
        mu = torch.cat([out_l["rep"], out_u["rep"]]).float()
        if o.sigma_head_batch == "joint":  # sigma^2 of both streams in one BatchNorm batch (official code)
            key = o.sigma_head_input
            sigma2 = self.student(None, features=torch.cat([out_l[key], out_u[key]]))["sigma2"].float()
        else:  # each stream's sigma^2 from its own forward
            sigma2 = torch.cat([out_l["sigma2"], out_u["sigma2"]]).float()
        prob = torch.cat([out_l["logits"], out_u["logits"]]).float().softmax(1)  # student: picks hard anchors
        ijcv = o.version == "ijcv_interpretation"
        gdp = self.global_prototypes() if ijcv and bool((self.gdp_precision > 0).any()) else None
        loss_c, (prec, weighted) = prcl_loss(mu, sigma2, labels, valid, prob, self.num_classes, o.strong_threshold,
                                             o.temperature, o.num_queries, o.num_negatives, o.literal_denominator,
                                             reduce=dist.all_reduce_sum, global_prototypes=gdp,
                                             virtual_negatives=o.virtual_negatives if ijcv else 0,
                                             sampling=o.sampling)
        with torch.no_grad():  # 5. global distribution prototypes (P10) with forgetting
            self.gdp_precision.mul_(o.gdp_momentum).add_(prec)
            self.gdp_weighted.mul_(o.gdp_momentum).add_(weighted)
        # 6. lambda_c(t) = w exp(-5 (t/T)^2) (P9); L = L_s + lambda_u L_u + lambda_c L_c
        lam = self.contrast_lambda()
        losses.update({"loss_contrast": lam * loss_c, "contrast_lambda": lam,
                       "sigma2_mean": float(sigma2[out_l["rep"].shape[0]:].detach().mean())})
        if o.variance_reg == "custom":  # [interpretation]: KL of the anchors' sigma^2 to N(0, I)
            s2 = sigma2.permute(0, 2, 3, 1)[valid & (labels != IGNORE_INDEX)]
            losses["loss_var"] = o.variance_reg_weight * (variance_regularizer(s2) if s2.numel() else sigma2.sum() * 0)
        return {**losses, **step.logs}

    # -- hooks for figures and metrics ---------------------------------------------------------
    def prototypes(self) -> torch.Tensor | None:
        """mu of the global distribution prototypes (K, D), NaN rows for classes never seen;
        ``None`` before the first training step."""
        if not bool((self.gdp_precision > 0).any()):
            return None
        return self.global_prototypes()[0]

    def snapshot_extras(self, outputs: dict) -> dict[str, torch.Tensor]:
        """``sigma2``: the mean over dimensions of the evaluation model's sigma^2, (B, h, w)."""
        return {"sigma2": outputs["sigma2"].float().mean(1)} if "sigma2" in outputs else {}

    @torch.no_grad()
    def final_metrics(self, unlabeled_batches) -> dict:
        """``sigma2_error_auroc``: ROC AUC of the per-pixel mean sigma^2 for telling wrong
        teacher pseudo-labels from right ones on the unlabeled train images (hidden ground
        truth; 255 pixels ignored), and ``confidence_error_auroc``, the same for 1 - max
        softmax (the baseline sigma^2 has to beat). Empty without hidden ground truth.

        Also ``sigma2_error_auroc_within_class`` (the AUROC inside each pseudo-label class,
        averaged over the classes with both right and wrong pixels: it separates "sigma^2
        flags errors" from "sigma^2 differs between classes with different error rates")
        and ``sigma2_mean_right`` / ``sigma2_mean_wrong``."""
        if unlabeled_batches is None:
            return {}
        scores, conf_scores, errors, classes = [], [], [], []
        for batch in unlabeled_batches:
            if "hidden_mask" not in batch:
                return {}
            out = self.forward_eval(batch["image"])
            size = batch["image"].shape[-2:]
            conf, pseudo = upsample(out["logits"].float(), size).softmax(1).max(1)
            s2 = upsample(out["sigma2"].float().mean(1, keepdim=True), size)[:, 0]
            gt = batch["hidden_mask"]
            keep = gt != IGNORE_INDEX
            scores.append(s2[keep])
            conf_scores.append(1.0 - conf[keep])
            errors.append((pseudo != gt)[keep].float())
            classes.append(pseudo[keep].float())
        cat = lambda xs: dist.all_gather_cat(torch.cat(xs) if xs else torch.zeros(0))  # noqa: E731
        s, c, e = cat(scores).cpu().numpy(), cat(conf_scores).cpu().numpy(), cat(errors).cpu().numpy()
        k = cat(classes).cpu().numpy()
        within = [error_auroc(s[k == j], e[k == j]) for j in range(self.num_classes)]
        within = [a for a in within if not math.isnan(a)]
        return {"sigma2_error_auroc": error_auroc(s, e), "confidence_error_auroc": error_auroc(c, e),
                "sigma2_error_auroc_within_class": sum(within) / len(within) if within else math.nan,
                "sigma2_mean_right": float(s[e == 0].mean()) if (e == 0).any() else math.nan,
                "sigma2_mean_wrong": float(s[e == 1].mean()) if (e == 1).any() else math.nan}


def error_auroc(scores, errors) -> float:
    """ROC AUC (``sklearn.metrics.roc_auc_score``) of ``scores`` float (N,) for telling
    ``errors`` (N,) = 1 (wrong pseudo-label) from 0 (right): a plain AUC in [0, 1] (not a
    percentage), 0.5 = no signal; NaN if only one kind occurs."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    errors = np.asarray(errors)
    if errors.size == 0 or errors.min() == errors.max():
        return math.nan
    return float(roc_auc_score(errors, np.asarray(scores)))
