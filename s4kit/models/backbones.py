"""Encoders for DeepLabV3+: torchvision ResNets at output stride 8/16, and a small CNN for digits.

Every encoder returns ``(low, high)``: the stride-4 low-level feature (ResNet ``layer1``)
and the stride-``output_stride`` high-level feature (ResNet ``layer4``), and exposes
``low_channels`` and ``high_channels``.

Source: reference/substrate.md §2.1 (ReCo ``network/deeplabv3/deeplabv3.py``; the
"no-stride-dilate" rewrite of layer3/layer4).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from ..errors import S4kitError

RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


class WeightsError(S4kitError, ValueError):
    """A pretrained checkpoint is unreadable or does not match the model's keys."""


def _dilate(layer: nn.Module, dilation: int) -> None:
    """Remove a ResNet stage's stride and dilate its 3x3 convolutions in place.

    The stage's strided convolutions (its first 3x3 conv and the shortcut 1x1) get stride
    1; the first block's 3x3 convs get dilation ``dilation // 2`` (they sit at the seam to
    the previous resolution) and the later blocks' 3x3 convs dilation ``dilation``.
    Padding equals dilation, so spatial size is kept.
    """
    for b, block in enumerate(layer):
        d = max(dilation // 2, 1) if b == 0 else dilation
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                if m.stride == (2, 2):
                    m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation, m.padding = (d, d), (d, d)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-18/34/50/101 trunk (``conv1 .. layer4``) at output stride 8 or 16.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        output_stride: 16 (layer4 dilated 2) or 8 (layer3 dilated 2, layer4 dilated 4).

    The stem is torchvision's 7x7 conv (ImageNet weights load from torchvision files);
    the U2PL/UniMatch deep stem is not implemented yet.

    Input float (B, 3, H, W); returns low (B, 64 or 256, H/4, W/4) and
    high (B, 512 or 2048, H/OS, W/OS).

    Raises ``ValueError`` for an unknown name or stride.
    """

    def __init__(self, name: str = "resnet101", output_stride: int = 16):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"model.backbone={name!r}: expected one of {sorted(RESNETS)} or 'small'")
        if output_stride not in (8, 16):
            raise ValueError(f"model.output_stride={output_stride}: expected 8 or 16")
        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if output_stride == 8:
            _dilate(self.layer3, 2)
            _dilate(self.layer4, 4)
        else:
            _dilate(self.layer4, 2)
        self.high_channels = RESNETS[name]
        self.low_channels = self.high_channels // 8 if self.high_channels == 2048 else 64

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def load_encoder_weights(encoder: nn.Module, path: str | Path, drop_prefixes: tuple[str, ...] = ("fc.",)) -> None:
    """Load a torchvision-style ResNet checkpoint strictly into ``encoder``.

    The classification layer (keys starting with ``drop_prefixes``: ``fc.weight``,
    ``fc.bias`` for ResNets, ``head.`` for MiT) is the only key allowed to be unexpected; a ``state_dict`` or ``model`` wrapper and a ``module.`` prefix (DDP) are
    unwrapped. Every other missing or unexpected key is an error: a wrong file must never
    silently give a randomly initialised backbone (the UniMatch/AllSpark ``strict=False``
    defect, reference/substrate.md §2.7).

    The file is read with ``torch.load(weights_only=True)``: it may hold tensors and plain
    containers only, never arbitrary pickled objects.

    Raises:
        WeightsError (one line, naming the file): it cannot be read or unpickled (the first
            line of torch's message); it holds something other than a dict of tensors
            ("expected a state dict (a dict of tensors), got Tensor"); or its keys or shapes
            do not match the encoder (the offending keys are named).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"{path}: cannot read pretrained weights ({first})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict (a dict of tensors), got {type(state).__name__}")
    bad_item = next(((k, v) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))),
                    None)
    if bad_item is not None:
        raise WeightsError(f"{path}: expected a state dict (a dict of tensors), got a dict with "
                           f"{str(bad_item[0])!r} of type {type(bad_item[1]).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()
             if not k.removeprefix("module.").startswith(tuple(drop_prefixes))}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: does not match the encoder: missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise WeightsError(f"{path}: shape mismatch for {bad[:8]}: e.g. {bad[0]} {tuple(state[bad[0]].shape)} "
                           f"vs model {tuple(own[bad[0]].shape)}")
    nn.Module.load_state_dict(encoder, state, strict=True)  # smp's MiT overrides load_state_dict without strict


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallEncoder(nn.Module):
    """A small CNN encoder for the digits preset on CPU (same interface as ``ResNetEncoder``).

    Widths ``w, 2w, 4w``: two conv-BN-ReLU per stage; strides 2, 2 (low-level, stride 4)
    then 2 (high-level, stride 8). ``output_stride`` must be 8.

    Input float (B, 3, H, W); returns low (B, 2w, H/4, W/4) and high (B, 4w, H/8, W/8).
    """

    def __init__(self, width: int = 32, output_stride: int = 8):
        super().__init__()
        if output_stride != 8:
            raise ValueError(f"model.output_stride={output_stride}: the small encoder has stride 8")
        w = width
        self.stage1 = nn.Sequential(_conv_bn(3, w, 2), _conv_bn(w, w))
        self.stage2 = nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w))
        self.stage3 = nn.Sequential(_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w))
        self.low_channels, self.high_channels = 2 * w, 4 * w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.stage2(self.stage1(x))
        return low, self.stage3(low)
