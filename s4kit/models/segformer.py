"""SegFormer: a Mix Transformer (MiT-b0..b5) encoder and the all-MLP decoder.

Source: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021, §3.2 (all-MLP decoder, Eq. 1-4); the AllSpark variant of the
head is docs/methods/allspark.md §2.2 (AllSpark ``model/semseg/allspark.py`` ``SegFormerHead``).
The MiT encoders come from segmentation-models-pytorch (``MixVisionTransformerEncoder``,
same parameter names as NVlabs' ``mit_bX.pth``); the decoder is written here.

    encoder(x) -> c1..c4 at strides 4, 8, 16, 32 (widths C_1..C_4, e.g. 32/64/160/256 for b0)
    c4 <- bottleneck(c4)                         (identity; AllSpark, reference §2.2)
    e_i = Linear_{C_i -> D}(c_i), upsampled to the c1 grid (bilinear, align_corners=False)  (Eq. 1-2)
    f   = ReLU(BN(Conv1x1_{4D -> D}(concat(e_4, e_3, e_2, e_1))))                         (Eq. 3)
    logits = Conv1x1_{D -> K}(Dropout2d_{0.1}(f))                                          (Eq. 4)

Digits scenes are 32x32: the MiT stage-4 grid is then 1x1 (one token), which makes the
channel attention of AllSpark degenerate (a channel's "spatial map" is one number, so CSG's
cosine is +-1). ``model.input_scale`` resizes the input inside the network (bilinear);
the digits presets use 2 (64x64 -> stage 4 is 2x2, logits 16x16). Measured on this CPU
(1 thread, MiT-b0 encoder forward+backward, batch 32): 32 px 0.25 s, 64 px 0.48 s,
128 px 1.57 s, hence 2 rather than 4.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

MIT_NAMES = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")


class MiTEncoder(nn.Module):
    """MiT-b0..b5 from segmentation-models-pytorch, returning the four stage features.

    Args:
        name: ``mit_b0`` .. ``mit_b5`` (depths/widths of SegFormer Table 6; b5: widths
            64/128/320/512, depths 3/6/40/3, docs/methods/allspark.md §2.1).
        drop_path: stochastic-depth rate (0.1 in SegFormer and AllSpark).

    ``forward(x)`` takes float (B, 3, H, W) and returns ``[c1, c2, c3, c4]``, float
    (B, C_i, ceil(H/s_i), ceil(W/s_i)) for s_i = 4, 8, 16, 32. ``channels`` holds C_1..C_4.
    The smp module sits in ``self.mit``; its parameter names equal NVlabs' checkpoints.

    Raises ``ValueError`` for an unknown name.
    """

    def __init__(self, name: str = "mit_b0", drop_path: float = 0.1):
        super().__init__()
        if name not in MIT_NAMES:
            raise ValueError(f"model.encoder={name!r}: expected one of {MIT_NAMES}")
        from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

        spec = mix_transformer_encoders[name]
        params = dict(spec["params"], drop_path_rate=drop_path)
        self.mit = spec["encoder"](**params)
        self.channels = list(params["embed_dims"])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.mit(x)[2:])  # smp prepends the input and an empty stride-2 feature


def stage4_size(size: int) -> int:
    """Side of the MiT stage-4 grid for an input side ``size``: ceil(size / 32).

    Patch embeddings: 7x7 stride 4 padding 3 gives ceil(s/4); each 3x3 stride 2 padding 1
    halves with ceil. Example: 513 -> 17, 512 -> 16, 321 -> 11, 801 -> 26, 64 -> 2.
    """
    s = math.ceil(size / 4)
    for _ in range(3):
        s = math.ceil(s / 2)
    return s


class SegFormer(nn.Module):
    """SegFormer (MiT encoder + all-MLP decoder) with an optional stage-4 bottleneck.

    Args:
        encoder: a ``MiTEncoder`` (or any module returning four features with ``channels``).
        num_classes: K.
        decoder_dim: D, the MLP decoder width (256 for b0/b1, 768 for b2-b5 in SegFormer and AllSpark).
        input_scale: factor by which the input is resized (bilinear) before the encoder (1: none).
        dropout: Dropout2d rate before the classifier (0.1).

    Attributes:
        bottleneck: applied to c4 before the decoder; ``nn.Identity`` here, the AllSpark
            method installs ``AllSpark`` (reference §2.2: only c4 passes through it).

    ``forward(x)`` takes float (B, 3, H, W) and returns a dict with ``logits`` (B, K, h, w),
    ``feat`` (B, D, h, w) the fused decoder feature f (Eq. 3) and ``rep`` (the same tensor:
    SegFormer has no separate representation head), where (h, w) is the c1 grid,
    ceil(H * input_scale / 4). Losses upsample the logits to the labels.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, decoder_dim: int = 256, input_scale: float = 1.0,
                 dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.bottleneck: nn.Module = nn.Identity()
        self.linear = nn.ModuleList([nn.Conv2d(c, decoder_dim, 1) for c in encoder.channels])
        self.fuse = nn.Sequential(nn.Conv2d(4 * decoder_dim, decoder_dim, 1, bias=False),
                                  nn.BatchNorm2d(decoder_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_dim, num_classes, 1)
        self.input_scale, self.num_classes, self.feat_channels = float(input_scale), num_classes, decoder_dim

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder features [c1, c2, c3, c4] of ``x`` (after ``input_scale``), without the bottleneck."""
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)
        return self.encoder(x)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 1-3: the fused feature f (B, D, h1, w1) from [c1, c2, c3, c4]."""
        size = feats[0].shape[-2:]
        e = [F.interpolate(lin(c), size=size, mode="bilinear", align_corners=False) if c.shape[-2:] != size
             else lin(c) for lin, c in zip(self.linear, feats)]
        return self.fuse(torch.cat(e[::-1], dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c1, c2, c3, c4 = self.features(x)
        f = self.decode([c1, c2, c3, self.bottleneck(c4)])
        return {"logits": self.classifier(self.dropout(f)), "feat": f, "rep": f}


def load_mit_weights(encoder: MiTEncoder, path: str | Path) -> None:
    """Load an NVlabs-style ``mit_bX.pth`` (ImageNet-1K classifier) strictly into ``encoder``.

    The files are SegFormer's ImageNet-1K MiT releases (NVlabs/SegFormer README, "Training";
    AllSpark re-hosts ``mit_b2..b5.pth`` and reads them in ``model/backbone/mit.py``). Their
    keys (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``norm4.bias``, ...) equal
    segmentation-models-pytorch's MiT parameter names one to one, so no renaming is done.
    The classification head (``head.weight``, ``head.bias``) is the only key allowed to be
    unexpected; every other missing or unexpected key, or a shape mismatch, raises
    ``WeightsError`` naming the file and the first keys (AllSpark loads with ``strict=False``,
    so a wrong file silently gives a random backbone: docs/methods/allspark.md §10.9). A Hugging
    Face ``nvidia/mit-bX`` file (``segformer.encoder.*`` keys) is refused with that said.
    """
    from .backbones import load_encoder_weights

    load_encoder_weights(encoder.mit, path, drop_prefixes=("head.",))
