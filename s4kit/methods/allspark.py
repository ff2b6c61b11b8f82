"""``allspark``: SegFormer whose labeled stage-4 features are rebuilt from unlabeled ones.

Source: Wang et al., AllSpark, CVPR 2024; training loop of the official
``train_allspark.py`` as in docs/methods/allspark.md §7 (module: ``s4kit/models/allspark.py``).
One iteration (``framework=allspark``, the default, the paper's code):

1. eval-mode forward of the *same* network on the weakly augmented unlabeled crops u
   (no EMA teacher): pseudo-labels y^ = argmax, and the logits as CSG class maps;
2. one training forward on cat(strong-photometric x, u): AllSpark's CSG assigns the
   channels of u to classes and enqueues them in the semantic memory, then the labeled
   half is rebuilt by channel cross-attention (K/V from u during the warm-up, from the
   memory afterwards) and the unlabeled half by channel self-attention;
3. no confidence threshold, no CutMix, no strong view of u:

       L = 1/2 (L_x + L_u),   L_x = CE(f(x), y) (OHEM on Cityscapes),   L_u = CE(f(u), y^)    (A9)

``framework=unimatch_allspark`` (**not in the paper**, marked as an s4kit variant): the
pseudo-labels of the weak view supervise a CutMix/ClassMix-ed strong view of u with
UniMatch's per-pixel confidence mask (``confidence_threshold``, e.g. 0.95); CSG then groups
the channels of the strong view by the one-hot mixed pseudo-labels.

Logits are resized to the labels (L_x, L_u), the pseudo-label crop and the evaluated image
bilinearly with ``align_corners=False``, as the official ``SemiDecoder.forward``
(``model/semseg/allspark.py`` L239); the ReCo-family methods use True (substrate §2.5).

Optimiser (paper): SGD 0.9, weight decay 1e-4, poly 0.9, everything but the encoder at
``optim.head_lr_mult`` = lr_multi (10 on VOC, 1 on Cityscapes): set in the presets.

s4kit options beyond the paper (defaults = paper; the digits preset uses them, see
``s4kit/configs/digits/allspark.yaml`` for the measurements):

| option | paper / code | digits preset |
|---|---|---|
| ``eval_source`` | ``per_image``: the labeled branch as self-attention at test time | ``memory``: K/V from the semantic memory, as in training after the warm-up |
| ``pl_forward`` | ``batch`` (K/V over the unlabeled batch) | ``memory`` (``batch`` during the memory warm-up) |
| ``framework`` | ``allspark`` (no threshold, no mixing) | see the preset |
| ``unsup_warmup_fraction`` | 0 (L_u from the first step) | see the preset |
| ``attn_drop`` | 0.1 | 0 (lets ``channel_attention`` use its fused kernel) |
| ``heads`` | 2 | 1 (the labeled attention matrix grows with h^2) |
| ``layer_scale`` | ``none`` | see the preset |

Why ``memory`` at test time: after the warm-up the labeled features are rebuilt from
K·C memory channels in every training step, but the paper evaluates with per-image
self-attention (C channels of the test image): the decoder never saw such features in
training. On digits (MiT-b0 from scratch, 800 iterations) the same checkpoint scored
14.1 mIoU with ``per_image`` and 28.1 with ``memory`` (seed 0, 16+4 batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..losses.ce import supervised_ce, unsupervised_masked_ce
from ..losses.ramps import fraction_to_iters
from ..models.allspark import AllSpark, memory_tokens
from .base import IGNORE_INDEX, Method, opt, register, require, unwrap
from .steps import pseudo_label_logs, require_unlabeled, strong_mixed_view
from .supervised import SupervisedOptions


@dataclass
class AllSparkOptions(SupervisedOptions):
    """Options of ``allspark``; defaults reproduce the official code (reference §11)."""

    name: str = "allspark"
    framework: Literal["allspark", "unimatch_allspark"] = "allspark"  # unimatch_allspark: s4kit variant, non-paper
    heads: int = opt(2, "[1, inf)")  # h
    attn_drop: float = opt(0.1, "[0, 1)")
    proj_drop: float = opt(0.1, "[0, 1)")
    # iterations with K/V from u before the memory: 5/80 epochs (VOC), 15/240 (Cityscapes)
    warmup_fraction: float = opt(0.0625, "[0, 1]")
    csg_input: Literal["logits", "softmax"] = "logits"  # logits (code) | softmax (paper's "probability map")
    memory_sync: Literal["allgather", "rank0_broadcast_literal", "local"] = "allgather"
    patch_num: Literal["auto", "literal"] = "auto"  # auto: true stage-4 size ceil(s/32)^2 | literal: (s//32+1)^2 (code)
    # K/V of the pseudo-label forward: batch (code: the unlabeled batch) | per_image | memory (s4kit, after warm-up)
    pl_forward: Literal["batch", "per_image", "memory"] = "batch"
    # K/V at evaluation: per_image (paper: self-attention) | batch | memory (s4kit)
    eval_source: Literal["per_image", "batch", "memory"] = "per_image"
    ignore_u_padding: bool = False  # code: crop padding of u counts in L_u
    sup_weight: float = opt(0.5, "[0, inf)")
    unsup_weight: float = opt(0.5, "[0, inf)")
    # allspark: none (0 = every pixel; only for measuring); unimatch_allspark: the mask
    confidence_threshold: float = opt(0.0, "[0, 1]")
    unsup_warmup_fraction: float = opt(0.0, "[0, 1]")  # share of the iterations with L_u off (paper: 0; the memory fills)
    # Y = gamma * attention + X with gamma (C,) learned from 0 (s4kit, not the paper: docs/methods/allspark.md §11)
    layer_scale: Literal["none", "zero"] = "none"

    @classmethod
    def validate(cls, cfg) -> None:
        """``model.name`` must be ``segformer``; with ``framework=allspark`` (no mixing)
        ``augment.mix`` must be ``none``. Raises ``ConfigError``."""
        require(cfg, "model.name", ("segformer",), "allspark needs the SegFormer network")
        if cfg.method.framework == "allspark":
            require(cfg, "augment.mix", ("none",), "framework=allspark does not read this option: it mixes nothing")


@register("allspark")
class AllSparkMethod(Method):
    """AllSpark training on a ``model.name=segformer`` network (bottleneck installed here).

    ``train_step(labeled, unlabeled)`` returns ``loss_sup`` (= sup_weight * L_x),
    ``loss_unsup`` (= unsup_weight * L_u), ``memory`` (1.0 once K/V come from the memory)
    and, with hidden ground truth, ``pl_precision``, ``pl_coverage``, ``pl_accuracy`` of the
    pseudo-labels (percent, at ``confidence_threshold``).

    Evaluation (``predict``) runs the labeled branch as per-image channel self-attention,
    what the official batch-1 evaluation computes (reference §6).

    Raises ``RuntimeError`` without an unlabeled batch.
    """

    Options = AllSparkOptions
    uses_unlabeled = True
    # logits to labels / images: bilinear with align_corners=False, as the official model's
    # SemiDecoder.forward (model/semseg/allspark.py L239); the ReCo family uses True
    align_corners = False

    def __init__(self, cfg):
        super().__init__(cfg)
        o = self.opts
        net = self.student
        tokens = memory_tokens(cfg.data.crop_size, cfg.model.input_scale, o.patch_num)
        net.bottleneck = AllSpark(net.encoder.channels[-1], self.num_classes, tokens, o.heads, o.attn_drop,
                                  o.proj_drop, o.memory_sync, o.layer_scale)
        net.bottleneck.infer_source = o.eval_source
        self.warmup_iters = fraction_to_iters(o.warmup_fraction, self.total_iters)
        self.unsup_warmup_iters = fraction_to_iters(o.unsup_warmup_fraction, self.total_iters)

    @property
    def bottleneck(self) -> AllSpark:
        return unwrap(self.student).bottleneck

    @torch.no_grad()
    def pseudo_label_forward(self, u: torch.Tensor) -> torch.Tensor:
        """Step 1: logits (B, K, h, w) of the network in eval mode on u (K/V as ``pl_forward``;
        ``memory`` falls back to ``batch`` while the memory is still warming up)."""
        net = unwrap(self.student)
        was_training = net.training
        net.eval()
        source = self.opts.pl_forward
        if source == "memory" and self.iteration < self.warmup_iters:
            source = "batch"
        self.bottleneck.infer_source = source
        try:
            return net(u)["logits"].float()
        finally:
            self.bottleneck.infer_source = self.opts.eval_source
            net.train(was_training)

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:
        o, u = self.opts, require_unlabeled(self, unlabeled)["image"]
        size, n_l = u.shape[-2:], labeled["image"].shape[0]
        # 1. eval-mode forward of the same network on u: pseudo-labels and CSG class maps
        logits_pl = self.pseudo_label_forward(u)
        with torch.no_grad():
            confidence, pseudo = self.upsample_logits(logits_pl, size).softmax(1).max(1)
            if o.ignore_u_padding and "valid" in unlabeled:
                pseudo = pseudo.masked_fill(~unlabeled["valid"], IGNORE_INDEX)
                confidence = confidence.masked_fill(~unlabeled["valid"], 0.0)
            logs = pseudo_label_logs(pseudo, confidence, unlabeled, o.confidence_threshold)
            if o.framework == "allspark":
                u_in, class_maps = u, logits_pl if o.csg_input == "logits" else logits_pl.softmax(1)
            else:  # non-paper weak-to-strong variant
                u_in, pseudo, confidence = strong_mixed_view(self, u, pseudo, confidence)
                class_maps = F.one_hot(pseudo.clamp(max=self.num_classes), self.num_classes + 1)[..., :-1]
                class_maps = class_maps.permute(0, 3, 1, 2).float()  # ignored pixels: all zeros
        # 2. one training forward on cat(x, u): CSG, memory, channel cross-attention (A1-A8)
        use_memory = self.iteration >= self.warmup_iters
        self.bottleneck.set_context(n_l, class_maps, use_memory)
        out = self.student(torch.cat([self.augment_labeled(labeled["image"]), u_in]))
        logits_l, logits_u = out["logits"][:n_l], self.upsample_logits(out["logits"][n_l:], size)
        if o.framework == "allspark":
            loss_u = supervised_ce(logits_u, pseudo)  # (A9): every pixel, no threshold
        else:
            loss_u = unsupervised_masked_ce(logits_u, pseudo, confidence, o.confidence_threshold)
        # 3. L = sup_weight L_x + unsup_weight L_u   (A9: both 1/2)
        unsup_on = self.iteration >= self.unsup_warmup_iters
        return {"loss_sup": o.sup_weight * self.sup_loss(logits_l, labeled["mask"]),
                "loss_unsup": (o.unsup_weight if unsup_on else 0.0) * loss_u, "memory": float(use_memory),
                "unsup_on": float(unsup_on), **logs}
