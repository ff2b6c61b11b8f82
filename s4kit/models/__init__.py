"""Networks: DeepLabV3+ (torchvision ResNet or a small CNN), heads, EMA teacher."""
from __future__ import annotations

import torch.nn as nn

from ..config import pretrained_file
from .backbones import ResNetEncoder, SmallEncoder, WeightsError, load_encoder_weights
from .deeplab import DeepLabV3Plus
from .maskformer import MaskFormerHead
from .segformer import MiTEncoder, SegFormer, load_mit_weights

_BUILDERS: dict = {}
_READS: dict[str, tuple[str, ...]] = {}
CNN_FIELDS = ("backbone", "width", "output_stride", "pretrained")  # build_cnn_encoder (width: backbone=small only)
DEEPLAB_FIELDS = CNN_FIELDS + ("rep_dim", "aspp_channels", "low_channels", "head_channels", "aspp_rates")


def register_model(name: str, reads: tuple[str, ...]):
    """Decorator: register ``fn(model_cfg, num_classes) -> nn.Module`` as ``model.name=<name>``;
    ``reads`` names the ``model.*`` fields ``fn`` reads (``config.resolve`` rejects any other
    field that differs from its default)."""

    def wrap(fn):
        _BUILDERS[name] = fn
        _READS[name] = ("name", "sync_bn") + tuple(reads)  # sync_bn: the trainer's, for every network
        return fn

    return wrap


def network_fields(name: str) -> tuple[str, ...]:
    """The ``model.*`` fields network ``name`` reads; raises ``KeyError`` for an unknown name."""
    return _READS[name]


def build_cnn_encoder(mcfg) -> nn.Module:
    """The DeepLabV3+ encoder of ``model.backbone`` (``small``, a torchvision ResNet or a deep-stem
    ResNet) at ``model.output_stride``; ImageNet weights load strictly from ``model.pretrained``
    (nothing is loaded for ``null`` or ``none``; raises ``WeightsError`` for a wrong file)."""
    if mcfg.backbone == "small":
        encoder = SmallEncoder(mcfg.width, mcfg.output_stride)
    else:
        encoder = ResNetEncoder(mcfg.backbone, mcfg.output_stride)
    weights = pretrained_file(mcfg)
    if weights:
        load_encoder_weights(encoder, weights)
    return encoder


@register_model("deeplabv3plus", reads=DEEPLAB_FIELDS)
def build_deeplabv3plus(mcfg, num_classes: int) -> nn.Module:
    """DeepLabV3+ on ``model.backbone`` (``small``, a torchvision or deep-stem ResNet), see ``deeplab.py``.

    Pretrained encoder weights load strictly from ``model.pretrained`` (a local path).
    """
    encoder = build_cnn_encoder(mcfg)
    return DeepLabV3Plus(encoder, num_classes, mcfg.rep_dim, mcfg.aspp_channels, mcfg.low_channels,
                         mcfg.head_channels, tuple(mcfg.aspp_rates))


@register_model("maskformer", reads=DEEPLAB_FIELDS + ("num_queries", "dec_layers", "dec_heads", "dec_ffn",
                                                       "dec_dropout", "dec_memory", "masked_attention"))
def build_maskformer(mcfg, num_classes: int) -> nn.Module:
    """DeepLabV3+ encoder/decoder with a MaskFormer mask-classification head (``maskformer.py``);
    E = ``model.rep_dim``, N = ``model.num_queries``, decoder ``model.dec_*``."""
    encoder = build_cnn_encoder(mcfg)
    return MaskFormerHead(encoder, num_classes, mcfg.rep_dim, mcfg.num_queries, mcfg.dec_layers, mcfg.dec_heads,
                          mcfg.dec_ffn, mcfg.dec_dropout, mcfg.aspp_channels, mcfg.low_channels, mcfg.head_channels,
                          tuple(mcfg.aspp_rates), memory=mcfg.dec_memory, masked_attention=mcfg.masked_attention)


@register_model("segformer", reads=("encoder", "drop_path", "pretrained", "decoder_dim", "input_scale"))
def build_segformer(mcfg, num_classes: int) -> nn.Module:
    """SegFormer on MiT ``model.encoder`` (``mit_b0`` .. ``mit_b5``), see ``segformer.py``.

    Pretrained MiT weights (NVlabs ``mit_bX.pth`` layout) load strictly from ``model.pretrained``.
    """
    encoder = MiTEncoder(mcfg.encoder, mcfg.drop_path)
    weights = pretrained_file(mcfg)
    if weights:
        load_mit_weights(encoder, weights)
    return SegFormer(encoder, num_classes, mcfg.decoder_dim, mcfg.input_scale)


def build_model(mcfg, num_classes: int) -> nn.Module:
    """Build ``model.name`` for ``num_classes`` classes; raises ``ValueError`` for an unknown name."""
    if mcfg.name not in _BUILDERS:
        raise ValueError(f"model.name={mcfg.name!r}: unknown; known: {sorted(_BUILDERS)}")
    return _BUILDERS[mcfg.name](mcfg, num_classes)


__all__ = ["build_model", "register_model", "network_fields", "DeepLabV3Plus", "MaskFormerHead", "ResNetEncoder",
           "SmallEncoder", "WeightsError", "load_encoder_weights", "SegFormer", "MiTEncoder", "load_mit_weights"]
