"""DeepLabV3+ with a classifier head and a representation head (the ReCo-family network).

Source: docs/methods/substrate.md §2 (ReCo ``network/deeplabv3/{deeplabv3,aspp}.py``;
PRCL/CSS ``DeepLabv3Plus_with_rep``). Structure, with C_a = ASPP width (256), C_l = the
low-level projection width (48), C_f = C_a + C_l (304):

    encoder -> low (stride 4), high (stride OS)
    ASPP(high): 1x1, three 3x3 atrous (rates), image pooling; concat -> 1x1 -> C_a
    decoder feature f = concat(up(ASPP), 1x1-BN-ReLU(low) -> C_l)          (B, C_f, H/4, W/4)
    classifier:      3x3 C_f->C_h, BN, ReLU, 1x1 C_h->K  -> logits       (B, K,   H/4, W/4)
    representation:  3x3 C_f->C_h, BN, ReLU, 1x1 C_h->D  -> rep         (B, D,   H/4, W/4)

The representation is *not* L2-normalised inside the network (substrate §2.4): losses
normalise explicitly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    """k x k convolution (no bias, "same" padding, dilation) -> BatchNorm -> ReLU."""
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (substrate §2.2): five Conv-BN-ReLU branches, no dropout.

    Input (B, C_in, h, w) -> output (B, C_out, h, w). ``rates`` are the three atrous rates:
    (6, 12, 18) at OS16, (12, 24, 36) at OS8.
    """

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(cin, cout, 1))
        self.project = conv_bn_relu(5 * cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """The classifier / representation head: 3x3 conv-BN-ReLU then a 1x1 conv with bias."""
    return nn.Sequential(conv_bn_relu(cin, hidden, 3), nn.Conv2d(hidden, cout, 1))


class DeepLabTrunk(nn.Module):
    """The DeepLabV3+ encoder-decoder shared by the per-pixel head (``DeepLabV3Plus``) and the
    mask-classification head (``maskformer.MaskFormerHead``).

        a = ASPP(high),   f = [upsample(a) ; reduce(low)]   (bilinear, ``align_corners=True``)

    Args: ``encoder`` returning ``(low, high)`` with ``low_channels``/``high_channels``;
    aspp_channels, low_channels: C_a, C_l; aspp_rates: the three atrous rates.
    """

    def __init__(self, encoder: nn.Module, aspp_channels: int = 256, low_channels: int = 48,
                 aspp_rates: tuple[int, int, int] = (6, 12, 18)):
        super().__init__()
        self.encoder = encoder
        self.aspp = ASPP(encoder.high_channels, aspp_channels, tuple(aspp_rates))
        self.reduce = conv_bn_relu(encoder.low_channels, low_channels, 1)
        self.feat_channels = aspp_channels + low_channels

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f (B, C_a + C_l, H/4, W/4), a (B, C_a, H/OS, W/OS))`` of images x (B, 3, H, W)."""
        low, high = self.encoder(x)
        a = self.aspp(high)
        f = torch.cat([F.interpolate(a, size=low.shape[-2:], mode="bilinear", align_corners=True), self.reduce(low)], 1)
        return f, a

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder feature f (B, C_f, H/4, W/4)."""
        return self.trunk(x)[0]


class DeepLabV3Plus(DeepLabTrunk):
    """DeepLabV3+ returning logits, representations and the decoder feature at stride 4.

    Args:
        encoder: a module returning ``(low, high)`` with ``low_channels``/``high_channels``.
        num_classes: K.
        rep_dim: D, the representation dimension (256 in ReCo, PRCL, CSS).
        aspp_channels, low_channels, head_channels: C_a, C_l, C_h (256, 48, 256 in the papers).
        aspp_rates: the three atrous rates.

    ``forward(x)`` takes float (B, 3, H, W) and returns a dict with
    ``logits`` (B, K, H/4, W/4), ``rep`` (B, D, H/4, W/4) and ``feat`` (B, C_f, H/4, W/4),
    the raw decoder concatenation (PRCL's probability head reads it). Logits are upsampled
    to the input by the losses (bilinear, ``align_corners=True``, substrate §2.5).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, rep_dim: int = 256, aspp_channels: int = 256,
                 low_channels: int = 48, head_channels: int = 256, aspp_rates: tuple[int, int, int] = (6, 12, 18)):
        super().__init__(encoder, aspp_channels, low_channels, aspp_rates)
        self.classifier = head(self.feat_channels, head_channels, num_classes)
        self.representation = head(self.feat_channels, head_channels, rep_dim)
        self.num_classes, self.rep_dim = num_classes, rep_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.decode(x)
        return {"logits": self.classifier(f), "rep": self.representation(f), "feat": f}
