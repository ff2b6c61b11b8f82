"""The method interface and registry.

Every method is an ``nn.Module`` registered by name and built from a config. The trainer
knows only this interface (DESIGN.md "Methods"):

* ``train_step(labeled, unlabeled) -> dict``: entries whose key starts with ``loss`` are
  scalar tensors that the trainer sums and back-propagates; every other entry is a
  float diagnostic (pseudo-label precision, ...) written to ``log.csv``.
* ``predict(image) -> logits`` (B, K, H, W) at the input resolution, from the evaluation
  model (the EMA teacher where the method has one and ``eval.model=teacher``).
* ``after_step(step)``: called after every optimiser step (the EMA update).
* ``iteration`` / ``total_iters``: set by the trainer before each ``train_step`` (0-based
  iteration, also right after a resume), for loss-weight schedules.
* ``param_groups()``: optimiser parameter groups (the trainer sets their learning rates).
* ``trainable``: every trained part (the student and any extra head such as rc2l's projection)
  in one module; DDP, SyncBN, gradient clipping and the optimiser see exactly these parameters.
* ``find_unused_parameters``: DDP's flag for the student (True when some student parameter
  may get no gradient in a step).

Batches are dicts: ``image`` float (B, 3, H, W) normalised, ``mask`` int64 (B, H, W) with
255 = ignore (labeled only), ``id`` list of str; unlabeled batches of datasets with hidden
ground truth also carry ``hidden_mask`` int64 (B, H, W), which methods may use only to
*measure* pseudo-labels, never in a loss.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import build_model
from ..models.ema import ema_update, make_teacher
from ..labels import IGNORE_INDEX  # noqa: F401  (re-exported to the methods)

_REGISTRY: dict[str, type["Method"]] = {}


_INTERVAL = re.compile(r"([\[(])\s*(-?inf|[-+.\deE]+)\s*,\s*(-?inf|[-+.\deE]+)\s*([\])])")


def in_interval(value: float, interval: str) -> bool:
    """Whether ``value`` lies in ``interval``, written ``"[0, 1]"``, ``"(0, inf)"``, ``"[1, inf)"``
    (square bracket: closed end; NaN lies in none). Raises ``ValueError`` for a malformed interval."""
    m = _INTERVAL.fullmatch(interval.strip())
    if m is None:
        raise ValueError(f"malformed interval {interval!r}: expected e.g. '[0, 1]' or '(0, inf)'")
    left, lo, hi, right = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
    return (lo <= value if left == "[" else lo < value) and (value <= hi if right == "]" else value < hi)


def opt(default: Any, interval: str) -> Any:
    """A numeric option with its range: ``ema_alpha: float = opt(0.99, "[0, 1]")``.

    ``config.resolve`` rejects a value outside ``interval`` (see ``check_options``); a subclass
    that only changes the default (``strong_threshold: float = 0.8``) keeps its parent's range.
    Raises ``ValueError`` for a malformed interval (at import).
    """
    in_interval(0.0, interval)
    return field(default=default, metadata={"interval": interval})


@dataclass
class MethodOptions:
    """Options every method understands (the ``method:`` section of a config).

    Subclasses declare choices as ``Literal[...]`` annotations and ranges with ``opt``;
    ``unread`` names inherited options the method does not read (they must keep their
    default), and ``validate`` checks what involves other config sections. ``config.resolve``
    runs all three before anything is written.
    """

    name: str = "supervised"
    unread: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def validate(cls, cfg) -> None:
        """Cross-section checks on the resolved config (``require``); raises ``ConfigError``. Default: none."""


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator: make a ``Method`` subclass buildable as ``method.name=<name>``."""

    def wrap(cls: type["Method"]) -> type["Method"]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered() -> list[str]:
    """Names of every registered method."""
    return sorted(_REGISTRY)


def method_class(name: str | None) -> type["Method"]:
    """The class registered as ``name``; raises ``ConfigError`` listing the known names."""
    from ..config import ConfigError

    if name not in _REGISTRY:
        raise ConfigError(f"method.name={name!r}: unknown method; known: {', '.join(registered())}")
    return _REGISTRY[name]


def method_options(name: str | None) -> type:
    """The options dataclass of method ``name`` (its defaults are the paper's values)."""
    return method_class(name).Options


def build_method(cfg) -> "Method":
    """Instantiate ``cfg.method.name`` with the full (resolved) config."""
    return method_class(cfg.method.name)(cfg)


def option_choices(options: type, key: str) -> tuple | None:
    """The values a ``Literal[...]`` option ``key`` of ``options`` allows, or ``None``."""
    hint = typing.get_type_hints(options).get(key)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def option_interval(options: type, key: str) -> str | None:
    """The ``opt`` interval of option ``key``, from the nearest class of ``options`` that declares one."""
    for klass in options.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(key)
        if f is not None and "interval" in f.metadata:
            return f.metadata["interval"]
    return None


def check_options(options: type, values) -> None:
    """Check the ``method:`` section ``values`` (a mapping) against the ``options`` dataclass.

    Raises ``ConfigError`` naming ``method.<key>``, its value and what is allowed, for the first
    value outside its ``Literal`` choices or its ``opt`` interval. Keys ``options`` lacks and
    values of the wrong type are left to the OmegaConf merge that follows.
    """
    from ..config import ConfigError

    for key, value in values.items():
        allowed = option_choices(options, key)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"method.{key}={value!r}: expected one of {allowed}")
        interval = option_interval(options, key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if interval is not None and number and not in_interval(value, interval):
            raise ConfigError(f"method.{key}={value!r}: expected a number in {interval}")


def check_method(cfg) -> None:
    """The checks that need the merged config: no ``unread`` option of ``cfg.method`` differs
    from its default, then ``Options.validate(cfg)``. Raises ``ConfigError`` naming the option,
    its value and the method."""
    from ..config import ConfigError

    options = method_options(cfg.method.name)
    defaults = options()
    for key in options.unread:
        if cfg.method[key] != getattr(defaults, key):
            raise ConfigError(f"method.{key}={cfg.method[key]!r}: {cfg.method.name} does not read this option "
                              f"(expected its default {getattr(defaults, key)!r})")
    options.validate(cfg)


def require(cfg, key: str, allowed: tuple, why: str) -> None:
    """Raise ``ConfigError`` "``key=value``: ``why`` (expected ...)" unless the value of the dotted
    config ``key`` is in ``allowed``; for ``Options.validate``."""
    from omegaconf import OmegaConf

    from ..config import ConfigError

    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: {why} (expected {' or '.join(map(str, allowed))})")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") and isinstance(module, nn.parallel.DistributedDataParallel) else module


def upsample(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """Bilinear upsampling of (B, C, h, w) to (B, C, *size), ``align_corners=True`` by default
    (the ReCo family, substrate §2.5; AllSpark uses False, allspark §2)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def downsample_labels(labels: torch.Tensor, size) -> torch.Tensor:
    """Nearest downsampling of int64 (B, H, W) labels to (B, *size) (substrate §2.5)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels.unsqueeze(1).float(), size=tuple(size), mode="nearest").squeeze(1).long()


class Method(nn.Module):
    """Base class: a student network built from ``cfg.model``; subclasses add the rest.

    Attributes:
        student: the trained network (wrapped in DDP by the trainer when distributed).
        teacher: ``None`` here; semi-supervised subclasses set an EMA copy (no gradients).
        uses_unlabeled: whether ``train_step`` needs an unlabeled batch.
        uses_representation: whether a loss trains the representation head; if not, figures
            show the decoder feature instead.
        find_unused_parameters: DDP's flag for the student: True (the safe default) when some
            student parameter may get no gradient in a step (the representation head of a
            method without a representation loss); False, which is faster, when every one does.
        align_corners: how ``upsample_logits`` resizes logits to labels and images (``sup_loss``,
            ``predict``): True (ReCo family, substrate §2.5), False (AllSpark's official model).
    """

    name = "base"
    Options = MethodOptions
    uses_unlabeled = False
    uses_representation = False
    find_unused_parameters = True
    align_corners = True

    @property
    def representation_key(self) -> str:
        """Which network output holds the pixel representations this method shapes."""
        return "rep" if self.uses_representation else "feat"

    def __init__(self, cfg):
        from ..data.transforms import StrongAugment

        super().__init__()
        self.cfg = cfg
        self.opts = cfg.method
        self.num_classes = cfg.data.num_classes
        self.student = build_model(cfg.model, cfg.data.num_classes)
        self.teacher: nn.Module | None = None  # an EMA copy, made by ``make_teacher``
        self.strong = StrongAugment(cfg.augment, cfg.data.mean, cfg.data.std)  # photometric strong view
        # the trainer sets ``iteration`` (0-based) before every train_step, also after a resume,
        # so loss-weight schedules are pure functions of (iteration, total_iters)
        self.iteration, self.total_iters = 0, int(cfg.train.iters)

    # -- interface ---------------------------------------------------------------------
    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after optimiser step ``step`` (0-based): the EMA update of the teacher (S1)
        when the method has one (options ``ema_alpha``, ``ema_buffers``), else nothing."""
        if self.teacher is not None:
            ema_update(self.teacher, unwrap(self.student), step, self.opts.ema_alpha, self.opts.ema_buffers)

    # -- the pieces every method uses ----------------------------------------------------
    def make_teacher(self) -> None:
        """Set ``teacher`` to an EMA copy of the student (no gradients; S1)."""
        self.teacher = make_teacher(self.student)

    @torch.no_grad()
    def teacher_forward(self, image: torch.Tensor) -> dict:
        """Teacher outputs on ``image`` (B, 3, H, W), in train mode (ReCo-literal: batch
        statistics) or eval mode as ``method.teacher_bn`` says."""
        self.teacher.train(self.opts.teacher_bn == "train")
        return self.teacher(image)

    def augment_labeled(self, image: torch.Tensor) -> torch.Tensor:
        """Photometric augmentation of labeled images (B, 3, H, W) if ``augment.labeled`` (ReCo family)."""
        return self.strong(image) if self.cfg.augment.labeled else image

    def sup_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_s: CE (S3) or OHEM (``method.sup_loss=ohem``) of logits (B, K, h, w) upsampled to
        labels int64 (B, H, W), 255 ignored; a scalar."""
        from ..losses.ce import ohem_ce, supervised_ce

        logits = self.upsample_logits(logits, labels.shape[-2:])
        if self.opts.sup_loss == "ohem":
            return ohem_ce(logits, labels, self.opts.ohem_thresh, self.opts.ohem_min_kept)
        return supervised_ce(logits, labels)

    @property
    def trainable(self) -> nn.ModuleDict:
        """Every trained part of the method, by attribute name: ``student`` first, then each other
        child module holding a parameter with ``requires_grad`` (rc2l's ``projection`` with
        ``projection=true``); the EMA teacher has none and is left out.

        A new container over the same modules on every call, never registered on the method,
        so checkpoint keys stay ``student.*``, ``projection.*``. The trainer wraps its parts
        for DDP and SyncBN, clips and (through ``param_groups``) optimises its parameters.
        """
        return nn.ModuleDict({name: m for name, m in self.named_children()
                              if name == "student" or any(p.requires_grad for p in m.parameters())})

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters of ``trainable`` outside the student that require gradients (extra heads),
        in registration order; ``[]`` for most methods."""
        own = {id(p) for p in self.student.parameters()}
        return [p for p in self.trainable.parameters() if p.requires_grad and id(p) not in own]

    def param_groups(self) -> list[dict]:
        """Two groups: the encoder (``lr_mult`` 1) and the rest of the student plus every extra
        head of ``trainable`` (``lr_mult`` = optim.head_lr_mult)."""
        net = unwrap(self.student)
        enc = [p for n, p in net.named_parameters() if n.startswith("encoder.") and p.requires_grad]
        rest = [p for n, p in net.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
        rest += self.extra_parameters()
        return [{"params": enc, "lr_mult": 1.0, "name": "encoder"},
                {"params": rest, "lr_mult": float(self.cfg.optim.head_lr_mult), "name": "decoder"}]

    def eval_model(self) -> nn.Module:
        """The network used for evaluation: the teacher if any and ``eval.model=teacher``."""
        if self.teacher is not None and self.cfg.eval.model == "teacher":
            return self.teacher
        return unwrap(self.student)

    @torch.no_grad()
    def forward_eval(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs (``logits``, ``rep``, ...) of the evaluation model in eval mode."""
        net = self.eval_model()
        was_training = net.training
        net.eval()
        try:
            return net(image)
        finally:
            net.train(was_training)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) at the resolution of ``image`` (B, 3, H, W)."""
        return self.upsample_logits(self.forward_eval(image)["logits"].float(), image.shape[-2:])

    def upsample_logits(self, logits: torch.Tensor, size) -> torch.Tensor:
        """Bilinear resize of logits (B, K, h, w) to (B, K, *size) with this method's ``align_corners``."""
        return upsample(logits, tuple(size), self.align_corners)

    @torch.no_grad()
    def pseudo_labels(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels int64 (B, H, W), confidence float (B, H, W))`` from the evaluation model.

        Used to measure pseudo-label quality on unlabeled images with hidden ground truth;
        methods whose pseudo-labels are not the argmax of the logits override it.
        """
        confidence, labels = self.predict(image).softmax(1).max(1)
        return labels, confidence

    def final_metrics(self, unlabeled_batches) -> dict:
        """Method-specific entries for ``metrics.json``, computed after training.

        Args:
            unlabeled_batches: an iterable of unlabeled eval batches (``image`` (B, 3, H, W)
                on the device, ``hidden_mask`` where the dataset has hidden ground truth),
                or ``None`` if the method uses no unlabeled data.

        Default: nothing. PRCL reports how well its variance flags wrong pseudo-labels here.
        """
        return {}

    def snapshot_extras(self, outputs: dict) -> dict[str, torch.Tensor]:
        """Per-pixel method-specific maps for latent-space snapshots, each (B, h, w) on the
        head grid, from the evaluation model's ``outputs`` (PRCL: mean sigma^2; CSS: the
        indicator weight; RC2L: region id). Default: none."""
        return {}

    def prototypes(self) -> torch.Tensor | None:
        """Class prototypes (K, D) the method maintains, or ``None`` (figures then use class means)."""
        return None

    def forward(self, *args, **kwargs):  # pragma: no cover - methods are driven via train_step
        raise RuntimeError("call train_step(labeled, unlabeled) or predict(image), not the method itself")
