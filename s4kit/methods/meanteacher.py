"""``meanteacher``: EMA-teacher pseudo-labels on the weak view, student on the strong mixed view.

The ReCo-family semi-supervised baseline (the substrate page of the method notes; ReCo
``train_semisup.py`` without the contrastive term). One iteration:

1. the teacher (EMA of the student, S1) on the weak unlabeled view u:
   q_p = max softmax, y^_p = argmax (logits upsampled to the crop);
2. CutMix / ClassMix of u, y^ and q jointly inside the batch (S2), then the photometric
   strong view of the mixed images;
3. the student on the labeled batch (L_s, S3) and on the strong view (L_u, S4: per-image
   weight w_b = share of pixels with q >= delta_u; or UniMatch's per-pixel mask);
4. after the optimiser step, the EMA update of the teacher (S1).

    L = L_s + lambda_u L_u                                                          (S10)

Defaults follow ReCo's code: alpha = 0.99, BN buffers of the teacher its own
(``ema_buffers=own``), teacher in train mode for pseudo-labelling (``teacher_bn=train``),
delta_u = 0.97.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method, check_choices, register, upsample
from .steps import pseudo_label_logs, require_unlabeled, strong_mixed_view, teacher_pseudo_labels, unsupervised_ce
from .supervised import SupervisedOptions


@dataclass
class MeanTeacherOptions(SupervisedOptions):
    """Options of ``meanteacher``; ReCo's code values unless a preset says otherwise."""

    name: str = "meanteacher"
    ema_alpha: float = 0.99
    ema_buffers: str = "own"  # own (ReCo-literal) | ema | copy
    teacher_bn: str = "train"  # train (ReCo-literal: batch statistics) | eval
    confidence_threshold: float = 0.97  # delta_u
    unsup_loss: str = "weighted"  # weighted (ReCo S4) | masked (UniMatch per-pixel)
    unsup_weight: float = 1.0  # lambda_u


MEAN_TEACHER_CHOICES = {"ema_buffers": ("own", "ema", "copy"), "teacher_bn": ("train", "eval"),
                        "unsup_loss": ("weighted", "masked")}


@register("meanteacher")
class MeanTeacher(Method):
    """Mean teacher with ReCo's pseudo-label pipeline.

    ``train_step`` returns ``loss_sup``, ``loss_unsup`` and, when the unlabeled batch carries
    ``hidden_mask``, the diagnostics ``pl_precision``, ``pl_coverage`` and ``pl_accuracy``
    (percent) of the teacher's pseudo-labels on the weak view at ``confidence_threshold``.

    Raises ``ValueError`` for unknown ``ema_buffers``, ``teacher_bn`` or ``unsup_loss``
    values, and ``RuntimeError`` if no unlabeled batch is given.
    """

    Options = MeanTeacherOptions
    uses_unlabeled = True

    def __init__(self, cfg):
        super().__init__(cfg)
        check_choices(self.opts, MEAN_TEACHER_CHOICES)
        self.make_teacher()

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        o, u = self.opts, require_unlabeled(self, unlabeled)["image"]
        # 1. teacher pseudo-labels y^, confidences q on the weak view
        _, _, pseudo, conf = teacher_pseudo_labels(self, unlabeled)
        logs = pseudo_label_logs(pseudo, conf, unlabeled, o.confidence_threshold)
        # 2. mix (S2), strong view
        u_strong, pseudo_m, conf_m = strong_mixed_view(self, u, pseudo, conf)
        # 3. student on both batches; L_s (S3) and L_u (S4)
        out_l = self.student(self.augment_labeled(labeled["image"]))
        out_u = self.student(u_strong)
        loss_u = unsupervised_ce(o.unsup_loss, upsample(out_u["logits"], u.shape[-2:]), pseudo_m, conf_m,
                                 o.confidence_threshold)
        # (S10)
        return {"loss_sup": self.sup_loss(out_l["logits"], labeled["mask"]), "loss_unsup": o.unsup_weight * loss_u,
                **logs}
