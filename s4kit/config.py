"""Configuration: dataclass schemas, YAML presets and OmegaConf dotlist overrides.

``load_config("digits/reco", ["train.iters=100"])`` merges, in order:

1. the schema defaults below (``Config``);
2. the preset's ``_base_`` chain (``s4kit/configs/<dataset>/_base.yaml``);
3. the preset itself (``s4kit/configs/digits/reco.yaml``) or a YAML path;
4. the dotlist overrides;
5. the method's own ``Options`` dataclass (its defaults, then the ``method:`` section),
   so the result is *fully resolved*: every option a run used is in ``config.yaml``.

Unknown keys are errors that name the key and the file they came from.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf

from .errors import S4kitError, first_line as _first_line
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(S4kitError, ValueError):
    """A preset, YAML file or override is unknown or invalid."""


@dataclass
class DataConfig:
    """Where the data lives, which split, and the weak-view geometry."""

    dataset: str = "digits"  # digits | pascal | cityscapes | coco | folder (your own images, data/folder.py)
    root: str = "data/digits"
    splits: Optional[str] = None  # default: <root>/splits
    split: str = "1_16"
    num_classes: int = 11  # folder: 0 = K from <root>/classes.txt, filled in when the config is resolved
    label_format: str = "voc"  # voc (palette or grayscale ids) | cityscapes (gtFine labelIds -> train ids) | coco
    crop_size: int = 32
    scale_range: list = field(default_factory=lambda: [0.8, 1.25])  # random rescale factors
    flip: bool = False  # horizontal flips (off for digits: flips change a digit's identity)
    hidden_gt: bool = True  # unlabeled images have ground truth, used only to measure pseudo-labels
    cache: bool = True  # keep decoded images in memory (small datasets)
    num_workers: int = 0
    # [height, width]: resize every image (bicubic) and mask (nearest) once when read, before any
    # crop, for train and val alike (ReCo's Cityscapes protocol pre-resizes to 512x1024). null: native size.
    resize: Optional[list] = None
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class AugmentConfig:
    """Photometric ("strong") augmentation; docs/methods/substrate.md §4.2 (UniMatch column)."""

    jitter_p: float = 0.8
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0])
    labeled: bool = True  # photometric augmentation of labeled images too (ReCo family)
    mix: str = "cutmix"  # cutmix | classmix | none: mixing of unlabeled images (S2)


@dataclass
class ModelConfig:
    """The network: DeepLabV3+ on a small CNN or a torchvision ResNet, head widths; or SegFormer."""

    name: str = "deeplabv3plus"
    backbone: str = "small"  # small | resnet18 | resnet34 | resnet50 | resnet101 | resnet{50,101}_deepstem
    width: int = 32  # small encoder width
    output_stride: int = 8
    # local path to ImageNet encoder weights, loaded strictly; "none": a random encoder on purpose.
    # Required (a path or none) for every dataset but digits: data/README.md "Pretrained backbones".
    pretrained: Optional[str] = None
    rep_dim: int = 64
    aspp_channels: int = 64
    low_channels: int = 16
    head_channels: int = 64
    aspp_rates: list = field(default_factory=lambda: [1, 2, 3])
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP
    # model.name=maskformer only (models/maskformer.py; MaskFormer defaults 100, 6, 8, 2048, 0.1)
    num_queries: int = 100
    dec_layers: int = 6
    dec_heads: int = 8
    dec_ffn: int = 2048
    dec_dropout: float = 0.1
    dec_memory: str = "aspp"  # what the queries attend to: aspp (MaskFormer-like) | pixel (the embedding F)
    masked_attention: bool = False  # Mask2Former's masked cross-attention + learned query features
    # model.name=segformer only
    encoder: str = "mit_b0"  # mit_b0 .. mit_b5 (segmentation-models-pytorch)
    decoder_dim: int = 256  # all-MLP decoder width D (768 for b2-b5)
    drop_path: float = 0.1  # MiT stochastic depth
    input_scale: float = 1.0  # resize the input by this factor before the encoder (digits: 2)


@dataclass
class OptimConfig:
    """Optimiser and the poly schedule (S11)."""

    name: str = "adamw"  # sgd | adamw
    lr: float = 5e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0  # lr multiplier of everything but the encoder
    warmup_iters: int = 0  # linear warm-up before the poly decay
    power: float = 0.9  # poly exponent (S11)
    min_lr: float = 0.0  # poly floor eta_min (S11)
    grad_clip: Optional[float] = None


@dataclass
class TrainConfig:
    """Iterations, batches, seeds, checkpoints and logging."""

    iters: int = 800
    seed: int = 0
    batch_labeled: int = 16
    batch_unlabeled: int = 16
    # labeled images per optimiser step over all processes; null: batch_labeled x processes.
    # Set, each process accumulates gradients over global_batch / (processes x batch_labeled)
    # micro-batches (see accumulation_steps), so fewer GPUs keep a paper's batch and lr.
    global_batch: Optional[int] = None
    checkpoint_every: int = 200
    log_every: int = 20
    eval_every: int = 0  # 0: evaluate only at the end
    deterministic: bool = False
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    threads: int = 0  # torch CPU threads (0: leave torch's default)


@dataclass
class EvalConfig:
    """Evaluation protocol (substrate §8.4)."""

    mode: str = "full"  # full | sliding | crop (one random crop per image, CSS/PRCL official code)
    window: int = 0  # sliding-window size (0: data.crop_size)
    stride: int = 0  # sliding-window stride (0: floor(2 * window / 3))
    batch_size: int = 32  # full mode batches same-size images; sliding mode uses 1
    model: str = "teacher"  # teacher | student (methods without a teacher use the student)
    max_images: int = 0  # 0: the whole val set
    pl_max_images: int = 0  # final pseudo-label metrics: 0 every unlabeled train image, N a seeded random sample of N


@dataclass
class VizConfig:
    """Figures every run writes."""

    enabled: bool = True
    overlays: int = 6
    tsne_pixels: int = 2000
    tsne_iters: int = 500
    snapshots: int = 5  # latent-space snapshots from the first to the last iteration (0: none)
    snapshot_pixels: int = 2000  # fixed, seeded, class-balanced sample of val pixels
    snapshot_images: int = 128  # drawn from the first N val images


@dataclass
class ProtocolConfig:
    """The paper's training and evaluation protocol a preset stands for: its protocol card.

    Descriptive only: nothing here changes training. ``s4kit report`` prints it beside the
    runs of the preset and ``docs/protocols.md`` (``engine.report.protocol_markdown``) sets
    it beside the preset's own values. An empty ``source`` means no card (digits presets).
    Unknown items stay at their empty value ("", 0, null) and are shown as "unknown".
    """

    source: str = ""  # the paper and the code it follows, e.g. "ReCo (ICLR 2022); lorenmt/reco train_semisup.py"
    split_family: str = ""  # see SPLIT_FAMILIES
    backbone: str = ""  # the paper's encoder and its initialisation, free text
    resize: Optional[list] = None  # [height, width] every image is resized to first (ReCo Cityscapes)
    crop: int = 0  # training crop side (pixels)
    output_stride: Optional[int] = None  # encoder output stride (null: not applicable, e.g. MiT)
    scale_range: Optional[list] = None  # random rescale factors [lo, hi] of labeled images
    batch_labeled: int = 0  # global labeled batch over all GPUs
    batch_unlabeled: int = 0  # global unlabeled batch over all GPUs
    gpus: int = 0  # GPUs of the paper's runs
    iters: int = 0  # optimiser steps, at the preset's default split
    sup_loss: str = ""  # ce | ohem | set (MaskFormer set loss)
    mix: str = ""  # cutmix | classmix | none
    eval_mode: str = ""  # full | sliding | crop | pad (pad to eval_window, then crop back)
    eval_window: int = 0  # sliding/crop/pad size in pixels (0: not applicable)
    checkpoint: str = ""  # last | best: which checkpoint the paper's numbers come from
    eval_model: str = ""  # teacher | student: which network the paper evaluates
    loss_denominator: str = ""  # contrast losses: all_classes (the code) | anchor_classes
    notes: List[str] = field(default_factory=list)


@dataclass
class PaperResult:
    """One published mIoU of the method under the preset's protocol."""

    split: str = ""  # the kit split (data.split) it was measured on, or a name for a list the kit lacks
    miou: float = 0.0  # percent
    std: Optional[float] = None  # the paper's spread (percent), where it gives one
    source: str = ""  # where it is printed: paper, table and row (or README table and row)
    in_kit: bool = True  # false: the paper's list is not one the kit's split files hold
    note: str = ""


@dataclass
class RunConfig:
    """The run folder."""

    # null: runs/<dataset>/<config>/<split>/seed<k> (``default_run_dir``), so presets, splits and
    # seeds never share a folder
    dir: Optional[str] = None


@dataclass
class Config:
    """The whole configuration of a run; ``method`` holds the method's own options."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    run: RunConfig = field(default_factory=RunConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    paper: List[PaperResult] = field(default_factory=list)  # the paper's numbers per split (protocol card)
    method: Any = field(default_factory=lambda: {"name": "supervised"})
    device: str = "auto"  # cpu | cuda | auto


# FAST: every heavy step shrunk to seconds (notebook tests, smoke checks); MAX_ITERS can override iters.
FAST_OVERRIDES = ["train.iters=12", "train.log_every=4", "train.checkpoint_every=12", "eval.max_images=64",
                  "eval.pl_max_images=64", "viz.overlays=3", "viz.tsne_pixels=300", "viz.tsne_iters=100",
                  "viz.snapshot_pixels=500", "viz.snapshot_images=32"]


def preset_path(name: str) -> Path:
    """Resolve ``digits/reco`` to ``s4kit/configs/digits/reco.yaml``; a path is returned as is.

    Raises ``ConfigError`` listing the available presets if neither exists.
    """
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        return p
    if ".." in p.parts or p.is_absolute():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    q = CONFIG_DIR / f"{name}.yaml"
    if not q.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    return q


def available_presets() -> list[str]:
    """Every preset name, ``<dataset>/<method>``."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.glob("*/*.yaml")
                  if not p.name.startswith("_"))


_UNDERSCORE_NUMBER = re.compile(r"^(\s*[\w.-]+:\s*)(\d+(?:_\d+)+)(\s*(?:#.*)?)$", re.M)


def _quote_split_names(text: str) -> str:
    """Quote YAML scalars like ``1_16``: YAML 1.1 would read them as the integer 116.

    Split names are strings; quoting is harmless for true integer fields because
    ``int("200_000") == 200000``.
    """
    return _UNDERSCORE_NUMBER.sub(lambda m: f"{m.group(1)}'{m.group(2)}'{m.group(3)}", text)


def _read_yaml(path: Path) -> DictConfig:
    """One YAML file as a mapping; ``ConfigError`` (one line, naming the file) for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    try:
        node = OmegaConf.create(_quote_split_names(text))
    except Exception as exc:  # noqa: BLE001 - any parser error is the file's fault
        raise ConfigError(f"{path}: not valid YAML ({_first_line(exc)})") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config sections (data:, train:, ...), got a "
                          f"{'list' if node is not None else 'empty document'}")
    return node


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle ({' -> '.join(p.name for p in seen + (path,))})")
    node = _read_yaml(path)
    chain = []
    base = node.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str) or not (path.parent / base).is_file():
            raise ConfigError(f"{path}: _base_ {base!r} is not a file next to it")
        chain += _load_yaml_chain(path.parent / base, seen + (path,))
    return chain + [(path, node)]


def _merge(cfg: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as exc:
        text = getattr(exc, "msg", None) or str(exc).strip() or f"cannot merge ({type(exc).__name__})"
        raise ConfigError(f"{source}: {text}".splitlines()[0]) from None
    except TypeError:  # OmegaConf: a mapping onto a list (paper.0.miou=...) or a list onto a mapping
        raise ConfigError(f"{source}: a list and a mapping do not merge; give a list whole "
                          "(e.g. paper=[{split: '92', miou: 70.1, source: ...}])") from None


def load_config(preset: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Build a fully resolved config from a preset name or YAML path plus dotlist overrides.

    Returns a read-only ``DictConfig`` with the ``Config`` schema; ``cfg.method`` carries the
    method's resolved options (see ``s4kit.methods.method_options``).

    Raises:
        ConfigError: unknown preset, unknown key, wrong type, unknown method or option.
    """
    cfg = OmegaConf.structured(Config)
    for path, node in _load_yaml_chain(preset_path(str(preset))):
        cfg = _merge(cfg, node, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        if re.fullmatch(r"\d+(?:_\d+)+", value.strip()):  # a split name such as 1_16, not 116
            value = f"'{value.strip()}'"
        try:
            dot = OmegaConf.from_dotlist([f"{key}={value}"])
        except Exception as exc:  # noqa: BLE001 - the grammar error of a malformed override
            raise ConfigError(f"override {item!r}: {_first_line(exc)}") from None
        cfg = _merge(cfg, dot, f"override {item!r}")
    if cfg.run.dir is None:
        cfg.run.dir = default_run_dir(cfg, preset)
    return resolve(cfg)


def default_run_dir(cfg: DictConfig, preset: str | Path) -> str:
    """``runs/<dataset>/<config>/<split>/seed<k>``, ``<config>`` the preset's (or YAML file's) name:
    ``runs/digits/reco/1_16/seed0`` for ``digits/reco``; the layout of UniMatch and mmsegmentation
    work folders, one per experiment, so two commands never meet in one folder by default."""
    name = Path(str(preset)).stem
    return f"runs/{cfg.data.dataset}/{name}/{cfg.data.split}/seed{cfg.train.seed}"


def resolve(cfg: DictConfig) -> DictConfig:
    """Fill derived defaults (``data.splits``), merge the method's option schema and check it all.

    Raises ``ConfigError`` naming the key, its value and what is allowed, for the first of: a
    method option outside its choices or range (``methods.base.check_options``), a schema range
    or choice, a non-digits run without ``model.pretrained`` (a path, or ``none`` for a random
    encoder on purpose) (``_validate``), an option the method does not read set or a method's
    cross-section need (``model.name=maskformer`` for rc2l, ...: ``methods.base.check_method``),
    a ``model.*`` field the network does not read that differs from its default.
    Raises ``DataError`` (``data.folder.class_count``) for a folder dataset whose ``classes.txt``
    is bad or lists another number of classes than a positive ``data.num_classes``.
    """
    from .methods import method_options  # late import: config must not depend on methods at import
    from .methods.base import check_method, check_options

    cfg = _merge(OmegaConf.structured(Config), cfg, "config")
    if cfg.data.splits is None:
        cfg.data.splits = str(Path(cfg.data.root) / "splits")
    if not isinstance(cfg.method, DictConfig):
        raise ConfigError(f"method: expected a mapping with name and options, got {cfg.method!r}")
    name = cfg.method.get("name", None)
    options = method_options(name)  # raises ConfigError for an unknown method
    check_options(options, cfg.method)  # before the merge: its Literal errors do not say "method.<key>=..."
    try:
        method = OmegaConf.merge(OmegaConf.structured(options), cfg.method)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"method {name!r}: {str(exc).splitlines()[0]}") from exc
    check_options(options, method)  # again on the typed values: "nan" is a string before the merge
    cfg.method = method
    if cfg.data.dataset == "folder":  # K from <root>/classes.txt (0 stays 0 while the file is absent)
        from .data.folder import class_count

        cfg.data.num_classes = class_count(cfg.data.root, cfg.data.num_classes)
    _validate(cfg)
    check_method(cfg)
    _check_network_fields(cfg.model)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


DATASETS = ("digits", "pascal", "cityscapes", "coco", "folder")
MODEL_NAMES = ("deeplabv3plus", "maskformer", "segformer")
BACKBONES = ("small", "resnet18", "resnet34", "resnet50", "resnet101", "resnet50_deepstem", "resnet101_deepstem")
NO_WEIGHTS = "none"  # model.pretrained=none: train from a randomly initialised encoder, explicitly

# The ImageNet checkpoint each encoder loads (data/README.md "Pretrained backbones" says which paper uses which).
_TORCHVISION = "https://download.pytorch.org/models/"
IMAGENET_WEIGHTS = {
    "resnet18": f"torchvision's resnet18-f37072fd.pth ({_TORCHVISION}resnet18-f37072fd.pth)",
    "resnet34": f"torchvision's resnet34-b627a593.pth ({_TORCHVISION}resnet34-b627a593.pth)",
    "resnet50": f"torchvision's resnet50-0676ba61.pth ({_TORCHVISION}resnet50-0676ba61.pth)",
    "resnet101": f"torchvision's resnet101-63fe2227.pth ({_TORCHVISION}resnet101-63fe2227.pth)",
    "resnet50_deepstem": "UniMatch's deep-stem resnet50.pth (UniMatch README, 'Pretrained Backbone')",
    "resnet101_deepstem": "UniMatch's deep-stem resnet101.pth (UniMatch README, 'Pretrained Backbone')",
    **{f"mit_b{i}": f"NVlabs' ImageNet-1K mit_b{i}.pth (SegFormer README, 'Training'; AllSpark re-hosts b2-b5)"
       for i in range(6)},
}


def pretrained_file(m: DictConfig) -> Optional[str]:
    """The weights file ``model.pretrained`` names, or None when it is unset, empty or ``none``."""
    value = m.pretrained
    if value is None or not str(value).strip() or str(value).strip().lower() == NO_WEIGHTS:
        return None
    return str(value)


def _require_pretrained(cfg: DictConfig) -> None:
    """Every dataset but digits starts from ImageNet weights, as every paper does: an unset
    ``model.pretrained`` is refused (one line naming the key, the checkpoint to download and
    ``model.pretrained=none`` for a random encoder on purpose). Digits presets train from scratch."""
    m = cfg.model
    if cfg.data.dataset == "digits" or (m.pretrained is not None and str(m.pretrained).strip()):
        return
    encoder = m.encoder if m.name == "segformer" else m.backbone
    where = "data/README.md, 'Pretrained backbones'"
    if encoder not in IMAGENET_WEIGHTS:
        raise ConfigError(f"model.pretrained is not set and model.backbone={encoder} has no ImageNet checkpoint: "
                          f"give model.pretrained=none to train it from scratch on {cfg.data.dataset}, or a local "
                          f"checkpoint of this encoder ({where})")
    raise ConfigError(f"model.pretrained is not set: {cfg.data.dataset} runs start from ImageNet weights, as the "
                      f"papers do; download {IMAGENET_WEIGHTS[encoder]} and give model.pretrained=/path/to/file.pth, "
                      f"or model.pretrained=none to train from a random encoder ({where})")


ENCODERS = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")
# protocol.split_family: which published split lists a paper's numbers come from (docs/methods/substrate.md §7)
SPLIT_FAMILIES = {
    "classic": "VOC classic: 92-1464 labeled from the 1,464 fine set (U2PL/UniMatch lists, kit pascal/92..1464)",
    "blended": "VOC blended: 1/16-1/2 of the 10,582 set, CPS/ST++ lists (kit pascal/1_16..1_4)",
    "u2pl_blended": "VOC blended, U2PL lists (kit pascal/u2pl_1_16..u2pl_1_4)",
    "cps": "Cityscapes 1/16-1/2, CPS lists (kit cityscapes/1_16..1_2)",
    "coco": "COCO 1/512-1/32 of train2017, PseudoSeg/PC²Seg lists as UniMatch ships them (kit coco/1_512..1_32)",
    "u2pl": "Cityscapes, U2PL lists (not in the kit)",
    "reco_sampler": "ReCo's seeded class-balanced sampler, seeds 0-2 (not in the kit)",
    "custom": "the paper's own list (see the notes)",
    "unknown": "not published in an accessible source",
}
PROTOCOL_CHOICES = {
    "sup_loss": ("", "ce", "ohem", "set"),
    "mix": ("", "cutmix", "classmix", "none"),
    "eval_mode": ("", "full", "sliding", "crop", "pad"),
    "checkpoint": ("", "last", "best"),
    "eval_model": ("", "teacher", "student"),
    "loss_denominator": ("", "all_classes", "anchor_classes"),
}
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _size_pair(x) -> bool:
    """``[height, width]``: two positive integers."""
    return x is not None and len(x) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in x)


def _validate_protocol(cfg: DictConfig) -> None:
    """The protocol card and paper table (``ProtocolConfig``, ``PaperResult``): choices, ranges,
    one number per split. Raises ``ConfigError`` naming the key, its value and what is expected."""
    p = cfg.protocol
    fail = lambda key, expected: ConfigError(  # noqa: E731
        f"{key}={OmegaConf.select(cfg, key)!r}: expected {expected}")
    families = ("",) + tuple(SPLIT_FAMILIES)
    if p.split_family not in families:
        raise fail("protocol.split_family", ", ".join(SPLIT_FAMILIES) + " (or empty)")
    for key, choices in PROTOCOL_CHOICES.items():
        if p[key] not in choices:
            raise fail(f"protocol.{key}", ", ".join(c for c in choices if c) + " (or empty: unknown)")
    for key in ("crop", "batch_labeled", "batch_unlabeled", "gpus", "iters", "eval_window"):
        if p[key] < 0:
            raise fail(f"protocol.{key}", "0 (unknown) or a positive number")
    if p.output_stride not in (None, 8, 16, 32):
        raise fail("protocol.output_stride", "null, 8, 16 or 32")
    if p.scale_range is not None and not (len(p.scale_range) == 2 and all(_finite(x) for x in p.scale_range)
                                          and 0 < p.scale_range[0] <= p.scale_range[1]):
        raise fail("protocol.scale_range", "null or [lo, hi] with 0 < lo <= hi")
    if p.resize is not None and not _size_pair(p.resize):
        raise fail("protocol.resize", "null or [height, width], two positive integers")
    if p.source.strip() == "" and (len(cfg.paper) or any(p[k] not in ("", 0, None) for k in p if k != "notes")):
        raise fail("protocol.source", "the paper (and code) the protocol card describes")
    seen = set()
    for i, r in enumerate(cfg.paper):
        key = f"paper[{i}]"
        if not _SPLIT_NAME.match(str(r.split)):
            raise ConfigError(f"{key}.split={r.split!r}: expected a split name such as 92 or 1_16")
        if str(r.split) in seen:
            raise ConfigError(f"{key}.split={r.split!r}: a second number for this split (one per split)")
        seen.add(str(r.split))
        if not (_finite(r.miou) and 0 < r.miou <= 100):
            raise ConfigError(f"{key}.miou={r.miou!r}: expected a percentage in (0, 100]")
        if r.std is not None and not (_finite(r.std) and r.std >= 0):
            raise ConfigError(f"{key}.std={r.std!r}: expected null or a non-negative number")
        if str(r.source).strip() == "":
            raise ConfigError(f"{key}.source={r.source!r}: expected where the number is printed (paper, table and row)")


def _validate(cfg: DictConfig) -> None:
    """Every range and choice of the schema; the first violation raises ``ConfigError`` naming
    the key, its value and what is expected; then that a non-digits run names its ImageNet
    weights or ``model.pretrained=none`` (``_require_pretrained``). (Method options are checked
    by the methods.)"""
    d, m, o, tr, e, v = cfg.data, cfg.model, cfg.optim, cfg.train, cfg.eval, cfg.viz
    pos = "a positive number"
    nonneg = "0 or a positive number"
    checks = [
        (d.dataset in DATASETS, "data.dataset", "digits, pascal, cityscapes, coco or folder"),
        (d.dataset != "folder" or (d.label_format == "voc" and not d.hidden_gt), "data.dataset",
         "folder only with data.label_format=voc and data.hidden_gt=false (its unlabeled images have no mask)"),
        (d.label_format in ("voc", "cityscapes", "coco"), "data.label_format", "voc, cityscapes or coco"),
        (d.label_format != "coco" or d.num_classes == 81, "data.num_classes",
         "81 with data.label_format=coco (background + the 80 COCO things)"),
        (cfg.device in ("cpu", "cuda", "auto"), "device", "cpu, cuda or auto"),
        (e.mode in ("full", "sliding", "crop"), "eval.mode", "full, sliding or crop"),
        (e.model in ("teacher", "student"), "eval.model", "teacher or student"),
        (o.name in ("sgd", "adamw"), "optim.name", "sgd or adamw"),
        (cfg.augment.mix in ("cutmix", "classmix", "none"), "augment.mix", "cutmix, classmix or none"),
        (m.name in MODEL_NAMES, "model.name", ", ".join(MODEL_NAMES)),
        (m.backbone in BACKBONES, "model.backbone", ", ".join(BACKBONES)),
        (m.encoder in ENCODERS, "model.encoder", ", ".join(ENCODERS)),
        (m.output_stride in (8, 16), "model.output_stride", "8 or 16"),
        (m.name != "deeplabv3plus" or m.backbone != "small" or m.output_stride == 8, "model.output_stride",
         "8 with model.backbone=small"),
        (str(d.split).strip() != "" and "/" not in str(d.split) and ".." not in str(d.split), "data.split",
         "a split name such as 1_16 (no '/' or '..')"),
        (tr.iters > 0, "train.iters", pos),
        (tr.batch_labeled >= 2, "train.batch_labeled", "at least 2 (BatchNorm needs more than one value per channel)"),
        (tr.batch_unlabeled > 0, "train.batch_unlabeled", pos),
        (tr.global_batch is None or (tr.global_batch > 0 and tr.global_batch % tr.batch_labeled == 0),
         "train.global_batch", f"null or a positive multiple of train.batch_labeled={tr.batch_labeled}"),
        (tr.checkpoint_every > 0, "train.checkpoint_every", pos),
        (tr.log_every > 0, "train.log_every", pos),
        (tr.eval_every >= 0, "train.eval_every", nonneg),
        (tr.seed >= 0, "train.seed", nonneg),
        (tr.threads >= 0, "train.threads", "0 (torch's default) or a positive number"),
        (d.num_classes > 1 or (d.dataset == "folder" and d.num_classes == 0), "data.num_classes",
         "at least 2 (folder: 0, read from classes.txt)"),
        (d.num_classes <= 255, "data.num_classes", "at most 255 (255 is the ignore index)"),
        (d.crop_size > 0, "data.crop_size", pos),
        (d.num_workers >= 0, "data.num_workers", nonneg),
        (len(d.scale_range) == 2 and all(_finite(x) for x in d.scale_range)
         and 0 < d.scale_range[0] <= d.scale_range[1], "data.scale_range", "[lo, hi] with 0 < lo <= hi"),
        (len(d.mean) == 3 and all(_finite(x) for x in d.mean), "data.mean", "three finite numbers"),
        (len(d.std) == 3 and all(_finite(x) and x > 0 for x in d.std), "data.std", "three positive numbers"),
        (_finite(o.lr) and o.lr > 0, "optim.lr", "a positive finite number"),
        (_finite(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", "a number in [0, 1)"),
        (_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", "0 or a positive finite number"),
        (_finite(o.head_lr_mult) and o.head_lr_mult > 0, "optim.head_lr_mult", "a positive finite number"),
        (o.warmup_iters >= 0, "optim.warmup_iters", nonneg),
        (_finite(o.power) and o.power > 0, "optim.power", "a positive finite number"),
        (_finite(o.min_lr) and o.min_lr >= 0, "optim.min_lr", "0 or a positive finite number"),
        (o.grad_clip is None or (_finite(o.grad_clip) and o.grad_clip > 0), "optim.grad_clip",
         "null or a positive number"),
        (all(x > 0 for x in (m.width, m.rep_dim, m.aspp_channels, m.low_channels, m.head_channels, m.num_queries,
                             m.dec_layers, m.dec_heads, m.dec_ffn, m.decoder_dim)), "model widths",
         "positive numbers (width, rep_dim, aspp_channels, low_channels, head_channels, num_queries, dec_layers, "
         "dec_heads, dec_ffn, decoder_dim)"),
        (len(m.aspp_rates) > 0 and all(r > 0 for r in m.aspp_rates), "model.aspp_rates", "positive dilation rates"),
        (_finite(m.dec_dropout) and 0 <= m.dec_dropout < 1, "model.dec_dropout", "a number in [0, 1)"),
        (_finite(m.drop_path) and 0 <= m.drop_path < 1, "model.drop_path", "a number in [0, 1)"),
        (_finite(m.input_scale) and m.input_scale > 0, "model.input_scale", "a positive finite number"),
        (m.dec_memory in ("aspp", "pixel"), "model.dec_memory", "aspp or pixel"),
        (e.window >= 0, "eval.window", "0 (data.crop_size) or a positive number"),
        (e.stride >= 0, "eval.stride", "0 (2/3 of the window) or a positive number"),
        (e.batch_size > 0, "eval.batch_size", pos),
        (e.max_images >= 0, "eval.max_images", "0 (all) or a positive number"),
        (e.pl_max_images >= 0, "eval.pl_max_images", "0 (all) or a positive number"),
        (v.overlays >= 0 and v.tsne_pixels >= 0 and v.tsne_iters >= 0 and v.snapshots >= 0
         and v.snapshot_pixels >= 0 and v.snapshot_images >= 0, "viz", "non-negative counts"),
        (cfg.run.dir is not None and str(cfg.run.dir).strip() != "", "run.dir", "a folder path"),
        (str(d.root).strip() != "", "data.root", "a folder path"),
    ]
    for ok, key, expected in checks:
        if not ok:
            shown = key if (" " in key or key == "viz") else f"{key}={OmegaConf.select(cfg, key)!r}"
            raise ConfigError(f"{shown}: expected {expected}")
    if d.resize is not None and not _size_pair(d.resize):
        raise ConfigError(f"data.resize={OmegaConf.select(cfg, 'data.resize')!r}: expected null or [height, width], "
                          "two positive integers")
    _validate_protocol(cfg)
    _require_pretrained(cfg)


def accumulation_steps(global_batch: int | None, batch_labeled: int, world_size: int) -> int:
    """Micro-batches per optimiser step: ``global_batch / (world_size * batch_labeled)``.

    A process runs this many forward/backward passes on micro-batches of ``batch_labeled``
    labeled (and ``train.batch_unlabeled`` unlabeled) images, summing gradients, before each
    optimiser step; with ``world_size`` processes one step then sees ``global_batch`` labeled
    images, as on the paper's GPUs. ``global_batch=None`` means ``world_size * batch_labeled``
    (1 step). Examples: 16 = 4 GPUs x 4 x 1 = 1 GPU x 4 x 4 = 2 GPUs x 2 x 4.

    Raises ``ConfigError`` (one line, naming the three values) when ``global_batch`` is not
    a positive multiple of ``world_size * batch_labeled``.
    """
    if global_batch is None:
        return 1
    per_pass = world_size * batch_labeled
    if global_batch <= 0 or global_batch % per_pass:
        raise ConfigError(f"train.global_batch={global_batch} is not a multiple of {world_size} process(es) x "
                          f"train.batch_labeled={batch_labeled} = {per_pass}: choose a global batch, batch or "
                          "process count that divide exactly")
    return global_batch // per_pass


def _check_network_fields(m: DictConfig) -> None:
    """Every ``model.*`` field the network ``model.name`` does not read (``models.network_fields``)
    keeps its default; raises ``ConfigError`` naming the field, its value and the network."""
    from .models import network_fields

    reads = set(network_fields(m.name))
    network = f"model.name={m.name}"
    if "backbone" in reads and m.backbone != "small":  # width: the small encoder's only
        reads.discard("width")
        network += f" with model.backbone={m.backbone}"
    defaults = ModelConfig()
    for key in m:
        default = getattr(defaults, key)
        if key not in reads and m[key] != default:
            raise ConfigError(f"model.{key}={m[key]!r}: {network} does not read this field "
                              f"(expected its default {default!r})")


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (what ``config.yaml`` in a run folder holds)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml(path: str | Path) -> DictConfig:
    """Read a run's ``config.yaml`` back into a resolved config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return resolve(_merge(OmegaConf.structured(Config), _read_yaml(path), str(path)))
