"""Encoders for DeepLabV3+: torchvision ResNets at output stride 8/16, and a small CNN for digits.

Every encoder returns ``(low, high)``: the stride-4 low-level feature (ResNet ``layer1``)
and the stride-``output_stride`` high-level feature (ResNet ``layer4``), and exposes
``low_channels`` and ``high_channels``.

Source: docs/methods/substrate.md §2.1 (ReCo ``network/deeplabv3/deeplabv3.py``; the
"no-stride-dilate" rewrite of layer3/layer4; the deep-stem variant of UniMatch
``model/backbone/resnet.py``, CSS/PRCL ``generalframeworks/networks/resnet.py`` ``ResNet_Stem``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from ..errors import S4kitError

RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet50_deepstem": 2048,
           "resnet101_deepstem": 2048}
# deep-stem name -> the torchvision trunk whose stem it replaces
DEEP_STEM = {"resnet50_deepstem": "resnet50", "resnet101_deepstem": "resnet101"}


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


def _kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    """torchvision's ResNet initialisation of a conv (Kaiming normal, fan_out, ReLU gain)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def deep_stem(net: torchvision.models.ResNet) -> None:
    """Replace a torchvision Bottleneck ResNet's 7x7 stem by the deep stem, in place.

    The deep stem of PSPNet/U2PL/UniMatch (ResNet-C of He et al., "Bag of Tricks for Image
    Classification with CNNs", CVPR 2019, §4.1, at widths 64-64-128; mmseg's ResNetV1c uses
    32-32-64 under ``stem.*`` and is another network): three 3x3 convs instead of one 7x7,

        conv1 = Sequential(Conv3x3(3->64, stride 2), BN(64), ReLU,     # conv1.0, conv1.1, conv1.2
                           Conv3x3(64->64), BN(64), ReLU,               # conv1.3, conv1.4, conv1.5
                           Conv3x3(64->128))                            # conv1.6
        bn1 = BN(128); relu; maxpool (3x3, stride 2, padding 1)

    so the stem ends with 128 channels (not 64) at stride 4 and ``layer1``'s first block reads
    128 channels: its 1x1 ``conv1`` becomes 128->64 and its shortcut ``downsample.0`` 128->256.
    Every other module (and its parameter name) stays torchvision's, so the state-dict keys
    equal the UniMatch ``resnet101.pth`` release (``conv1.0.weight``, ``conv1.1.running_mean``,
    ..., ``conv1.6.weight``, ``bn1.*``, ``layer1.0.conv1.weight`` of shape (64, 128, 1, 1)).

    The maxpool keeps torchvision's ``ceil_mode=False`` as UniMatch does; CSS/PRCL's disabled
    ``ResNet_Stem`` uses ``ceil_mode=True``, which differs only when the stem output side is even
    (docs/methods/substrate.md §2.1).

    Source: UniMatch ``model/backbone/resnet.py`` ``ResNet.__init__``; substrate §2.1.
    """
    def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return _kaiming(nn.Conv2d(cin, cout, 3, stride, 1, bias=False))

    net.conv1 = nn.Sequential(conv3x3(3, 64, 2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                              conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                              conv3x3(64, 128))
    net.bn1 = nn.BatchNorm2d(128)
    first = net.layer1[0]
    first.conv1 = _kaiming(nn.Conv2d(128, first.conv1.out_channels, 1, bias=False))
    shortcut = first.downsample[0]
    first.downsample[0] = _kaiming(nn.Conv2d(128, shortcut.out_channels, 1, bias=False))


class ResNetEncoder(nn.Module):
    """torchvision ResNet-18/34/50/101 trunk (``conv1 .. layer4``) at output stride 8 or 16.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` (torchvision's 7x7 stem;
            ImageNet weights load from the official torchvision files) or
            ``resnet101_deepstem`` / ``resnet50_deepstem`` (torchvision's ResNet-101/50 with the
            deep stem of ``deep_stem``: UniMatch, CSS Tables 2-3; weights load from UniMatch's
            ``resnet101.pth`` / ``resnet50.pth``).
        output_stride: 16 (layer4 dilated 2) or 8 (layer3 dilated 2, layer4 dilated 4).

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
        net = getattr(torchvision.models, DEEP_STEM.get(name, name))(weights=None)
        if name in DEEP_STEM:
            deep_stem(net)
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


# Checkpoint layouts s4kit recognises, to say in an error which file was given: (test on the key set, what it is).
LAYOUTS = (
    (lambda k: "conv1.0.weight" in k,
     "a deep-stem ResNet (UniMatch resnet50/101.pth): model.backbone=resnet50_deepstem/resnet101_deepstem"),
    (lambda k: "conv1.weight" in k and "layer1.0.conv1.weight" in k,
     "a torchvision ResNet (7x7 stem): model.backbone=resnet18/34/50/101"),
    (lambda k: any(x.startswith("stem.") for x in k),
     "an mmseg/mmcv ResNetV1c (stem.*: 32-32-64 channels), which no s4kit backbone reads"),
    (lambda k: "patch_embed1.proj.weight" in k, "an NVlabs MiT (mit_bX.pth): model.name=segformer"),
    (lambda k: any(x.startswith("segformer.") for x in k),
     "a Hugging Face transformers SegFormer (segformer.*), which s4kit does not read: use NVlabs' mit_bX.pth"),
    (lambda k: any(x.startswith(("student.", "teacher.")) for x in k),
     "an s4kit method checkpoint (student.*), not ImageNet encoder weights"),
)


def checkpoint_layout(keys) -> str | None:
    """What a state dict with these keys is (one of ``LAYOUTS``), or None if none matches."""
    keys = set(keys)
    return next((what for test, what in LAYOUTS if test(keys)), None)


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_encoder_weights(encoder: nn.Module, path: str | Path, drop_prefixes: tuple[str, ...] = ("fc.",)) -> None:
    """Load an ImageNet checkpoint strictly into ``encoder`` (keys are mapped one to one).

    Accepted files (state-dict keys must equal the encoder's, see ``ResNetEncoder``, ``deep_stem``,
    ``segformer.MiTEncoder``):

    - torchvision ResNet-18/34/50/101 ImageNet files (``resnet101-63fe2227.pth``, ...) into
      ``ResNetEncoder("resnet*")``;
    - UniMatch's deep-stem ``resnet101.pth`` (``conv1.0.weight`` .. ``conv1.6.weight``) into
      ``ResNetEncoder("resnet101_deepstem")``;
    - NVlabs' MiT ``mit_bX.pth`` into ``MiTEncoder.mit`` (through ``segformer.load_mit_weights``).

    The classification layer (keys starting with ``drop_prefixes``: ``fc.`` for ResNets,
    ``head.`` for MiT) is the only key allowed to be unexpected; a ``state_dict`` or ``model``
    wrapper and a ``module.`` prefix (DDP) are unwrapped. BatchNorm ``num_batches_tracked``
    counters may be missing (the torchvision ImageNet files predate them); they are set to 0
    (they only matter for ``momentum=None``, which no s4kit BatchNorm uses). Every other
    missing or unexpected key, and any shape mismatch, is an error: a wrong file must never
    silently give a randomly initialised backbone (the UniMatch/AllSpark/CSS ``strict=False``
    defect, docs/methods/substrate.md §2.7).

    The file is read with ``torch.load(weights_only=True)``: it may hold tensors and plain
    containers only, never arbitrary pickled objects.

    Raises:
        WeightsError (one line, naming the file): it cannot be read or unpickled (the first
            line of torch's message); it holds something other than a dict of tensors
            ("expected a state dict (a dict of tensors), got Tensor"); or its keys or shapes
            do not match the encoder (the first few offending keys are named, and what the file
            looks like when it is a known other layout, e.g. a torchvision file for the deep stem).
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
    for k in set(own) - set(state):
        if k.endswith(".num_batches_tracked"):
            state[k] = torch.zeros_like(own[k])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = ([f"missing keys {_some(missing)}"] if missing else []) + \
            ([f"unexpected keys {_some(unexpected)}"] if unexpected else [])
        theirs, ours = checkpoint_layout(state), checkpoint_layout(own)
        hint = f"; the file looks like {theirs}" if theirs and theirs != ours else ""
        raise WeightsError(f"{path}: does not match the encoder: {', '.join(parts)}{hint}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise WeightsError(f"{path}: shape mismatch for {_some(bad)}: e.g. {bad[0]} {tuple(state[bad[0]].shape)} "
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
