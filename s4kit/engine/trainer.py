"""The trainer: one loop for every method, resumable, seeded, single-process or DDP.

``train(cfg)`` runs ``cfg.train.iters`` iterations of ``method.train_step`` and leaves a
run folder (DESIGN.md "Commands and the run folder")::

    config.yaml  metrics.json  log.csv  tb/  checkpoints/last.pt  figures/*.png

(``tb/``: the rows of ``log.csv`` as TensorBoard scalars, ``tensorboard --logdir runs``.)

Running it again with the same ``run.dir`` resumes from ``checkpoints/last.pt``: model,
teacher, optimiser, RNG states and the log are restored and the data streams restart at
the saved iteration, so (with ``train.deterministic=true`` on CPU) a killed and resumed run
ends with the same metrics as an uninterrupted one.

The learning rate follows the poly schedule with an optional linear warm-up:

    eta_t = max(eta_0 (1 - t/T)^0.9, eta_min)                                      (S11)
"""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from .. import __version__, dist
from ..io import RunLock, atomic_path, atomic_write_text, json_dumps
from ..config import NO_WEIGHTS, ConfigError, accumulation_steps, from_yaml, to_yaml
from ..errors import S4kitError, first_line
from ..data.loaders import build_dataset, build_train_streams, n_images
from ..methods import build_method
from .evaluate import evaluate, pseudo_label_metrics, sample_indices
from .logger import CSVLog
from .snapshots import Snapshotter
from .stages import progress_bar, stage


class NonFiniteLossError(S4kitError, FloatingPointError):
    """A loss became NaN or infinite (the message names the iteration, loss and value)."""


def poly_lr(base: float, step: int, total: int, power: float = 0.9, min_lr: float = 0.0, warmup: int = 0) -> float:
    """(S11) with a linear warm-up over the first ``warmup`` steps."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    return max(base * (1 - step / total) ** power, min_lr)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available (the local rank's GPU under torchrun), else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def setup_distributed(device: torch.device) -> None:
    """Initialise the process group under torchrun (NCCL on CUDA, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; in deterministic mode also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def git_sha() -> str | None:
    """The commit of the s4kit checkout, or None outside a git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _rng_state() -> dict:
    """Every RNG state as tensors and plain numbers, so ``torch.load(weights_only=True)`` reads it back.

    numpy's MT19937 state ``(name, keys uint32 (624,), pos, has_gauss, gauss)`` and python's
    ``(version, 625 ints, gauss_next)`` are stored with their keys as int64 tensors."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
             "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Inverse of ``_rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def build_optimizer(cfg, groups: list[dict]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over the method's parameter groups."""
    o = cfg.optim
    for g in groups:
        g["lr"] = o.lr * g.get("lr_mult", 1.0)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)


def _to_device(batch: dict | None, device: torch.device, channels_last: bool) -> dict | None:
    if batch is None:
        return None
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


RUN_MARKER = ".s4kit-run"  # written first into every run folder s4kit creates


def check_run_dir(run_dir: str | Path) -> Path:
    """Refuse a ``run.dir`` s4kit did not make, writing nothing.

    Accepted: a missing or empty folder, one holding the ``.s4kit-run`` marker, or (runs made
    before the marker) one holding ``checkpoints/last.pt`` or a ``config.yaml`` that reads as an
    s4kit config; ``prepare_run_dir`` then checks these files.

    Raises:
        ConfigError: ``run_dir`` (or a parent) is a file, or a non-empty folder that is not
            an s4kit run (the message names one of its files).
    """
    run_dir = Path(run_dir)
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"run.dir={str(run_dir)!r}: {str(parent)!r} is a file, not a folder")
    if run_dir.is_dir() and not (run_dir / RUN_MARKER).exists():
        found = sorted(p.name for p in run_dir.iterdir())
        legacy = (run_dir / "checkpoints" / "last.pt").is_file() or (
            (run_dir / "config.yaml").is_file() and _reads_as_config(run_dir / "config.yaml"))
        if found and not legacy:
            raise ConfigError(f"run.dir={str(run_dir)!r} is not empty and is not an s4kit run folder (holds "
                              f"{found[0]!r}{' and more' if len(found) > 1 else ''}); s4kit writes only into "
                              "new, empty or its own run folders: choose another run.dir")
    return run_dir


def claim_run_dir(run_dir: str | Path) -> Path:
    """``check_run_dir``, then create the folder and mark it as s4kit's (``.s4kit-run``).

    Raises ``ConfigError`` (see ``check_run_dir``) or ``OSError`` (permission, no space).
    """
    run_dir = check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / RUN_MARKER).exists():
        atomic_write_text(run_dir / RUN_MARKER, "s4kit run folder\n")
    return run_dir


def _reads_as_config(path: Path) -> bool:
    try:
        from_yaml(path)
        return True
    except ConfigError:
        return False


def prepare_run_dir(cfg, device: torch.device | str = "cpu") -> tuple[Path, dict | None]:
    """Claim the run folder, check a resume, write ``config.yaml``; return ``(run_dir, checkpoint)``.

    ``checkpoint`` is the content of ``checkpoints/last.pt`` (on ``device``) when the folder
    holds one, else None. ``config.yaml`` is written atomically, so a kill while writing it
    leaves the previous one.

    Raises:
        ConfigError: ``run.dir`` is not an s4kit run folder (see ``claim_run_dir``); it holds a
            run whose config differs (other than ``train.iters``, so a finished run can be
            extended, and ``run.dir``, so a run folder can be moved); it holds a checkpoint but no readable ``config.yaml``; or
            ``train.iters`` is below the checkpoint's iteration.
        CheckpointError: ``last.pt`` is corrupt or holds anything but tensors and plain values.
    """
    run_dir = Path(cfg.run.dir)
    path, ckpt_path = run_dir / "config.yaml", run_dir / "checkpoints" / "last.pt"
    if dist.rank() == 0:
        claim_run_dir(run_dir)
    state = None
    if ckpt_path.exists():
        if not path.is_file():
            raise ConfigError(f"{ckpt_path} exists but {path} is missing: cannot check that the resume uses the "
                              "same config; restore config.yaml or use another run.dir")
        state = load_checkpoint(ckpt_path, device)
        if cfg.train.iters < state["step"]:
            raise ConfigError(f"train.iters={cfg.train.iters} is below the iteration of {ckpt_path} "
                              f"({state['step']}): a run can be extended, not shortened; use another run.dir")
    if path.exists():
        try:
            old = from_yaml(path)
        except ConfigError as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); restore it or use another run.dir") from exc
        from omegaconf import OmegaConf

        a, b = OmegaConf.to_container(old), OmegaConf.to_container(cfg)
        for c in (a, b):  # a run may be extended (iters) and moved or shared (run.dir)
            c["train"].pop("iters"), c["run"].pop("dir")
        if a != b:
            diff = [k for k in sorted(set(_flatten(a)) | set(_flatten(b))) if _flatten(a).get(k) != _flatten(b).get(k)]
            raise ConfigError(f"{path}: run.dir holds a run with a different config ({', '.join(diff[:6])}); "
                              "use another run.dir or delete the folder")
    if dist.rank() == 0:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "figures").mkdir(exist_ok=True)
        atomic_write_text(path, to_yaml(cfg))
    return run_dir, state


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class CheckpointError(S4kitError):
    """A checkpoint is unreadable, unsafe to load, or does not fit the configured method."""


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a ``last.pt`` with ``torch.load(weights_only=True)``: tensors and plain values only.

    A checkpoint never carries code: a file holding any other Python object (a pickled class
    whose ``__reduce__`` would run on load) is refused before anything in it is executed.

    Raises:
        CheckpointError: the file is corrupt or truncated, holds non-tensor objects, or lacks
            ``step`` / ``method`` (the message names the file, one line).
    """
    import pickle

    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "global" in line]
        found = lines[0].rstrip(".") if lines else first_line(exc, sentence=True)
        raise CheckpointError(f"{path}: refused to load: it holds Python objects other than tensors and plain "
                              f"values, which could run code ({found})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, (PermissionError, IsADirectoryError)):
            raise
        raise CheckpointError(f"{path}: unreadable checkpoint ({first_line(exc, sentence=True)}); restore it, "
                              "or delete the run folder to start over") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or not isinstance(state.get("method"),
                                                                                               dict):
        raise CheckpointError(f"{path}: not an s4kit checkpoint (expected a dict with 'step' and 'method')")
    return state


def non_finite_tensors(method, optimizer) -> list[str]:
    """Names of the method's parameters/buffers and optimizer state tensors holding NaN or inf."""
    bad = [k for k, v in method.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    for i, s in optimizer.state.items():
        bad += [f"optimizer.{k}" for k, v in s.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    return bad


def save_checkpoint(path: Path, method, optimizer, step: int, extra: dict) -> None:
    """Atomic write of everything a resume needs, as tensors and plain values (see ``load_checkpoint``).

    ``rng`` is this process's RNG state; under DDP the trainer adds ``rng_per_rank`` (every
    rank's, gathered) so each rank resumes its own random stream (see ``_resume_rng``).
    """
    state = {"step": step, "method": unwrap_state(method), "optimizer": optimizer.state_dict(),
             "rng": _rng_state(), **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def unwrap_state(method) -> dict:
    """The method's state_dict with DDP's ``module.`` wrapper removed from the student keys."""
    return {k.replace("student.module.", "student."): v for k, v in method.state_dict().items()}


def _resume_rng(state: dict, rank: int, world: int) -> dict:
    """The RNG state rank ``rank`` of ``world`` resumes with: its own if the checkpoint holds
    one per rank for this world size, else the saved (rank 0's) one, with a warning when
    world > 1 (the run then goes on, but not as an uninterrupted run would)."""
    per_rank = state.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == world:
        return per_rank[rank]
    if world > 1 and rank == 0:
        import warnings

        warnings.warn(f"checkpoint holds RNG states for {len(per_rank) if per_rank else 1} rank(s), resuming with "
                      f"{world}: every rank continues rank 0's random stream", stacklevel=2)
    return state["rng"]


def load_method_state(method, state: dict, source: str | Path = "checkpoint") -> None:
    """Load a ``unwrap_state`` dict into a (possibly DDP-wrapped) method, strictly.

    Raises ``CheckpointError`` naming ``source`` and the first mismatching keys when the
    checkpoint was written by another method or model."""
    wrapped = hasattr(method.student, "module")
    if wrapped:
        state = {k.replace("student.", "student.module.", 1) if k.startswith("student.") else k: v
                 for k, v in state.items()}
    try:
        method.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = method.state_dict()
        if set(own) != set(state):
            detail = f"missing keys {sorted(set(own) - set(state))[:3]}, unexpected keys {sorted(set(state) - set(own))[:3]}"
        else:
            k = next((k for k in own if tuple(own[k].shape) != tuple(state[k].shape)), None)
            detail = (f"{k}: shape {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                      if k else first_line(exc, sentence=True))
        raise CheckpointError(f"{source}: does not fit the configured method {method.name!r} ({detail}); "
                              "was it written by another method or model?") from None


def training_step(method, optimizer, labeled: dict | list[dict], unlabeled: dict | list | None, iteration: int,
                  grad_clip: float | None = None, amp: bool = False, extras: list | tuple = (),
                  where: str = "", timing: dict | None = None) -> tuple[dict, torch.Tensor]:
    """One optimisation step of the trainer (the benchmarks time exactly this).

    For each of the A micro-batches (``labeled`` a dict: A = 1; a list of A dicts, with
    ``unlabeled`` a list of A dicts or Nones: gradient accumulation, ``train.global_batch``):
    ``method.train_step`` (under bf16 autocast if ``amp``), L_k = the sum of its ``loss*``
    entries, ``backward`` of L_k / A, DDP's all-reduce skipped (``dist.no_sync``) on all but
    the last micro-batch; so the summed gradient is

        g = 1/(W A) sum_{r, k} grad L_{r,k}

    over the W ranks and A micro-batches: the gradient of the mean loss of the global batch
    when each L is a mean over its batch (an average of per-micro-batch losses otherwise, as
    DDP is over ranks). Then once per step: the gradients of the ``extras`` (extra heads
    outside DDP) averaged over ranks, clipping of every trainable parameter at ``grad_clip``,
    ``optimizer.step`` and ``method.after_step`` (the EMA update). ``method.iteration`` is
    ``iteration`` for every micro-batch (ramps and schedules count optimiser steps).

    Returns ``(outputs, L)``: with A = 1 the outputs of ``train_step`` and L; else every output
    averaged over the micro-batches that produced it (float tensors) and the mean L.
    Raises ``NonFiniteLossError`` naming the iteration and the non-finite losses (``where`` is
    appended) before any weight changes. ``timing`` (optional): ``timing["training/ema"]``
    accumulates the seconds of ``method.after_step``.
    """
    micro = list(labeled) if isinstance(labeled, (list, tuple)) else [labeled]
    micro_u = list(unlabeled) if isinstance(unlabeled, (list, tuple)) else [unlabeled] * len(micro)
    if len(micro_u) != len(micro):
        raise ValueError(f"training_step: {len(micro)} labeled but {len(micro_u)} unlabeled micro-batches")
    steps = len(micro)
    method.iteration = iteration
    device_type = next(method.parameters()).device.type
    optimizer.zero_grad(set_to_none=True)
    outs, totals = [], []
    for i, (lab, unl) in enumerate(zip(micro, micro_u)):
        with dist.no_sync(method.student, skip=i < steps - 1):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
                out = method.train_step(lab, unl)
            losses = {k: v for k, v in out.items() if k.startswith("loss")}
            total = sum(v.float() for v in losses.values())
            if not torch.isfinite(total):
                bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach())}
                micro_where = f" (micro-batch {i + 1} of {steps})" if steps > 1 else ""
                raise NonFiniteLossError(f"iteration {iteration}: non-finite loss {bad}{micro_where}{where}")
            (total / steps if steps > 1 else total).backward()
        outs.append(out)
        totals.append(total.detach())
    dist.average_gradients(extras)
    clip_gradients(method, grad_clip)
    optimizer.step()
    if timing is None:
        method.after_step(iteration)
    else:
        t0 = time.perf_counter()
        method.after_step(iteration)
        _add(timing, "training/ema", t0)
    if steps == 1:
        return outs[0], total
    return _mean_outputs(outs), torch.stack(totals).mean()


def _add(timing: dict, key: str, start: float) -> float:
    """``timing[key] += perf_counter() - start``; returns the new ``perf_counter()``."""
    now = time.perf_counter()
    timing[key] = timing.get(key, 0.0) + now - start
    return now


# The parts of the "training" stage that ``_train`` times (keys "training/<part>" of metrics.json
# "timing"); the rest of the loop (the learning rate, the bar) is "training" minus their sum.
TRAINING_PARTS = ("data", "step", "ema", "logging", "periodic evaluation", "checkpoints", "snapshots")


def _mean_outputs(outs: list[dict]) -> dict:
    """Per key, the mean over the micro-batches' outputs holding it, as detached float tensors."""
    keys = list(dict.fromkeys(k for out in outs for k in out))
    return {k: torch.tensor([float(o[k].detach()) if isinstance(o[k], torch.Tensor) else float(o[k])
                             for o in outs if k in o]).mean() for k in keys}


def build_checked(cfg, pretrained: bool = True):
    """``build_method(cfg)``, with the option checks of method and model constructors (``ValueError``)
    turned into ``ConfigError`` so the command line prints them as one line.

    ``pretrained=False`` builds without reading ``model.pretrained`` (the method gets a copy of
    ``cfg`` with ``model.pretrained=none``): for a run's checkpoint, which replaces every encoder
    weight, so a run folder can be evaluated where its ImageNet file is not.
    """
    if not pretrained and cfg.model.pretrained is not None:
        cfg = copy.deepcopy(cfg)
        OmegaConf.set_readonly(cfg, False)
        cfg.model.pretrained = NO_WEIGHTS
        OmegaConf.set_readonly(cfg, True)
    try:
        return build_method(cfg)
    except ValueError as exc:
        if isinstance(exc, S4kitError):
            raise
        raise ConfigError(first_line(exc, sentence=True)) from None


def wrap_distributed(method, device: torch.device, sync_bn: bool) -> None:
    """Prepare ``method.trainable`` for DDP, in place: SyncBN in every part (CUDA and
    ``sync_bn``), then the student wrapped in ``DistributedDataParallel``
    (``method.find_unused_parameters``).

    Only the student goes into DDP: it runs on every rank in every step. An extra head (rc2l's
    projection) runs a data-dependent number of times, not at all on a rank whose batch yields no
    region, which DDP cannot follow: a module called outside a DDP forward is never all-reduced,
    and one inside DDP raises "Expected to have finished reduction in the prior iteration" (or,
    with unused-parameter search, "marked as ready twice") when a rank skips it. The trainer
    averages the extra heads' gradients after backward instead (``dist.average_gradients``).
    """
    for name, part in method.trainable.items():
        if device.type == "cuda" and sync_bn:
            setattr(method, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(part))
    method.student = torch.nn.parallel.DistributedDataParallel(
        method.student, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False, find_unused_parameters=method.find_unused_parameters)


def checked_param_groups(method) -> list[dict]:
    """``method.param_groups()``, checked to hold every parameter of ``method.trainable`` that
    requires gradients exactly once.

    Raises:
        RuntimeError: a method bug: a trainable parameter missing from, or repeated in, the groups
            (the message names up to three, e.g. ``projection.0.weight``).
    """
    groups = method.param_groups()
    seen = [id(p) for g in groups for p in g["params"]]
    names = {id(p): n for n, p in method.trainable.named_parameters() if p.requires_grad}
    missing = [n for i, n in names.items() if i not in seen]
    repeated = [names.get(i, "?") for i in set(seen) if seen.count(i) > 1]
    if missing or repeated:
        raise RuntimeError(f"method {method.name!r}: param_groups() leaves out {missing[:3]} and repeats "
                           f"{repeated[:3]} of its trainable parameters")
    return groups


def clip_gradients(method, max_norm: float) -> None:
    """Scale the gradients of every ``method.trainable`` parameter (student and extra heads) so
    their joint L2 norm is at most ``max_norm``; nothing when ``max_norm`` is 0."""
    if max_norm:
        torch.nn.utils.clip_grad_norm_(method.trainable.parameters(), max_norm)


def train(cfg, progress: bool = True) -> dict:
    """Train ``cfg.method.name`` as configured and return the final metrics (also in metrics.json).

    The method is built (its options checked) before any folder is touched; the run folder is
    then claimed (``claim_run_dir``) and locked (``RunLock``) for the whole run. A run that fails
    (an exception) before it logged a row or saved a checkpoint removes the folder it created, so
    the corrected command starts clean (a folder that existed before is never removed).

    Raises:
        ConfigError: invalid options, a foreign or mismatching run folder (see ``prepare_run_dir``),
            a ``train.global_batch`` that processes x ``train.batch_labeled`` does not divide.
        RunFolderBusy: another process trains into the same ``run.dir``.
        CheckpointError: a corrupt, unsafe or mismatching ``last.pt``.
        DataError: a folder dataset without ``classes.txt`` (``data.folder.require_classes``).
        NonFiniteLossError: a loss or, at a checkpoint, a weight became NaN/inf (the message
            names the last healthy checkpoint).
    """
    from ..data.folder import require_classes

    require_classes(cfg)  # a folder dataset whose classes.txt was missing when the config was read
    device = resolve_device(cfg.device)
    setup_distributed(device)
    rank = dist.rank()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    accumulation_steps(cfg.train.global_batch, cfg.train.batch_labeled, dist.world_size())  # ConfigError early
    seed_everything(cfg.train.seed + rank, cfg.train.deterministic)
    method = build_checked(cfg).to(device)
    lock, run_dir = None, Path(cfg.run.dir)
    made_here = not run_dir.exists()
    existing = next(p for p in run_dir.absolute().parents if p.exists())  # folders above: left as found
    if rank == 0:
        lock = RunLock(claim_run_dir(run_dir))
    failed = False
    try:
        return _train(cfg, method, device, progress)
    except Exception:
        failed = True
        raise
    finally:
        if lock is not None:
            lock.release()
        if failed and rank == 0 and made_here and not any(
                (run_dir / f).exists() for f in ("checkpoints/last.pt", "log.csv")):
            shutil.rmtree(run_dir, ignore_errors=True)  # made by this command, which logged and saved nothing
            for parent in run_dir.absolute().parents:  # and the empty folders it made above it
                if parent == existing:
                    break
                try:
                    parent.rmdir()  # only if empty: another run may have started beside it
                except OSError:
                    break


def finished_run(cfg) -> dict | None:
    """The metrics of the finished run in ``cfg.run.dir`` when there is one for this very config:
    ``metrics.json`` for ``train.iters`` iterations and a ``config.yaml`` equal to ``cfg`` (but for
    ``run.dir``). None otherwise: a new run, one to resume or extend, or one whose config differs
    (``prepare_run_dir`` then says how)."""
    run_dir = Path(cfg.run.dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        old = OmegaConf.to_container(from_yaml(run_dir / "config.yaml"))
    except (OSError, ValueError, ConfigError):
        return None
    new = OmegaConf.to_container(cfg)
    old["run"].pop("dir", None), new["run"].pop("dir", None)
    if not isinstance(metrics, dict) or metrics.get("iters") != cfg.train.iters or old != new:
        return None
    return metrics


@dataclass
class Progress:
    """What a run carries from iteration to iteration and across a resume."""

    start: int = 0  # the first iteration to run
    best: dict = field(default_factory=lambda: {"miou": -1.0, "iter": 0})
    train_seconds: float = 0.0
    window: dict = field(default_factory=dict)  # loss values of the iterations since the last log row
    saved_step: int | None = None  # iteration of the last checkpoint known to be healthy
    tick: float = field(default_factory=time.time)

    def clock(self) -> None:
        """Add the time since the last tick to ``train_seconds``."""
        now = time.time()
        self.train_seconds += now - self.tick
        self.tick = now


def resume(method, optimizer, state: dict | None, ckpt_path: Path) -> Progress:
    """Restore weights, optimiser, counters and this rank's RNG streams from ``state`` (the
    content of ``last.pt``); a fresh ``Progress`` when there is none. Raises ``CheckpointError``
    when the checkpoint does not fit the method or the optimiser."""
    if state is None:
        return Progress()
    load_method_state(method, state["method"], ckpt_path)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{ckpt_path}: optimizer state does not fit ({first_line(exc, sentence=True)})") from None
    _set_rng_state(_resume_rng(state, dist.rank(), dist.world_size()))
    if dist.rank() == 0:
        print(f"resuming {ckpt_path.parent.parent} from iteration {state['step']}", file=sys.stderr)
    return Progress(start=state["step"], best=state.get("best", Progress().best),
                    train_seconds=state.get("train_seconds", 0.0), window=state.get("log_window", {}),
                    saved_step=state["step"])


def log_row(cfg, method, device, progress: Progress, step: int, lr: float, timing: dict | None = None) -> dict:
    """The ``log.csv`` row of ``step``: learning rate, the mean of every logged value since the
    last row, throughput, and the val mIoU when ``train.eval_every`` says so (its seconds added
    to ``timing["training/periodic evaluation"]`` when ``timing`` is given)."""
    progress.clock()
    row = {"iter": step, "lr": lr, **{k: float(np.mean(v)) for k, v in progress.window.items()},
           "images_per_second": _images_per_iter(cfg, method) * step / max(progress.train_seconds, 1e-9)}
    progress.window = {}
    if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.iters:
        t0 = time.perf_counter()
        row["val_miou"] = _evaluate(cfg, method, device)["miou"]
        if timing is not None:
            _add(timing, "training/periodic evaluation", t0)
        if row["val_miou"] > progress.best["miou"]:
            progress.best = {"miou": row["val_miou"], "iter": step}
        progress.tick = time.time()  # evaluation is not training time
    return row


def checkpoint(method, optimizer, progress: Progress, step: int, ckpt_path: Path, snapshot_seconds: float) -> None:
    """Save ``last.pt`` at ``step`` (rank 0), only if every weight and optimiser state is finite.

    Raises ``NonFiniteLossError`` naming the poisoned tensors and the last healthy checkpoint."""
    progress.clock()
    dist.broadcast_state(method, buffers_only=True)  # every rank holds the saved model
    extra = {"best": progress.best, "train_seconds": progress.train_seconds, "log_window": progress.window,
             "snapshot_seconds": snapshot_seconds}
    if dist.world_size() > 1:  # each rank draws its own augmentations and samples: keep every stream
        extra["rng_per_rank"] = dist.all_gather_object(_rng_state())
    poisoned = non_finite_tensors(method, optimizer)
    if poisoned:
        raise NonFiniteLossError(f"iteration {step}: non-finite values in {len(poisoned)} tensor(s) "
                                 f"({', '.join(poisoned[:3])}) in run {ckpt_path.parent.parent}; not saved "
                                 f"({_healthy(ckpt_path, progress.saved_step)})")
    if dist.rank() == 0:
        save_checkpoint(ckpt_path, method, optimizer, step, extra)
    progress.saved_step = step


def _train(cfg, method, device: torch.device, show_progress: bool) -> dict:
    """The loop: prepare the folder, resume, then per iteration (one optimiser step): lr, the
    step's (micro-)batches, ``training_step``, snapshot, log row, checkpoint; then ``finalize``.

    Timing (metrics.json ``timing``, seconds of this invocation; a resumed run times only
    what it ran itself, like ``training``): ``training`` is the wall clock of the loop and
    ``training/<part>`` (``TRAINING_PARTS``) its parts, each accumulated with
    ``time.perf_counter`` around that part (two clock reads per part and iteration):
    ``data`` (next batches, copy to the device), ``step`` (forward, backward, optimiser step,
    reading the losses back), ``ema`` (``method.after_step``), ``logging`` (log row and
    file, periodic evaluation excluded), ``periodic evaluation`` (``train.eval_every``),
    ``checkpoints`` and ``snapshots``. On a GPU the host waits for the device when it reads
    the losses back, so the GPU's asynchronous work (the EMA's included) lands in ``step``.
    """
    rank, world = dist.rank(), dist.world_size()
    run_dir, state = prepare_run_dir(cfg, device)
    ckpt_path = run_dir / "checkpoints" / "last.pt"

    channels_last = device.type == "cuda" and cfg.train.channels_last
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if world > 1:
        wrap_distributed(method, device, cfg.model.sync_bn)
        dist.broadcast_state(method)  # the teacher, extra heads and buffers start as rank 0's
    extras = method.extra_parameters()  # gradients averaged after backward (see wrap_distributed)
    optimizer = build_optimizer(cfg, checked_param_groups(method))
    run = resume(method, optimizer, state, ckpt_path)
    log = CSVLog(run_dir / "log.csv", keep_until=run.start, enabled=rank == 0, tensorboard=run_dir / "tb")

    accum = accumulation_steps(cfg.train.global_batch, cfg.train.batch_labeled, world)
    labeled_it, unlabeled_it = build_train_streams(cfg, run.start, rank, world, need_unlabeled=method.uses_unlabeled,
                                                   accum=accum)
    amp = device.type == "cuda" and cfg.train.amp
    o, T = cfg.optim, cfg.train.iters
    tqdm = progress_bar()
    snap = Snapshotter(cfg, method, device, run_dir, lambda: build_dataset(cfg, "val", train=False)) \
        if rank == 0 and cfg.viz.snapshots else None
    if snap is not None and state is not None:
        snap.seconds = state.get("snapshot_seconds", 0.0)
    talk = show_progress and rank == 0
    timing: dict[str, float] = {}  # seconds per stage of this invocation (metrics.json "timing")
    bar = tqdm(range(run.start, T), initial=run.start, total=T, desc=f"{cfg.method.name}",
               disable=not talk, mininterval=2.0, dynamic_ncols=True)
    run.tick = time.time()
    method.train()
    try:  # the log (and its TensorBoard writer) is closed also when an iteration raises
        timing.update({"training": 0.0, **{f"training/{key}": 0.0 for key in TRAINING_PARTS}})  # this order
        with stage("training", timing, talk):
            for t in bar:
                lr = poly_lr(o.lr, t, T, o.power, o.min_lr, o.warmup_iters)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_mult", 1.0)
                t0 = time.perf_counter()
                # accum micro-batches per optimiser step (train.global_batch); everything else once per step
                labeled = [_to_device(next(labeled_it), device, channels_last) for _ in range(accum)]
                unlabeled = [_to_device(next(unlabeled_it), device, channels_last) if unlabeled_it is not None
                             else None for _ in range(accum)]
                if accum == 1:
                    labeled, unlabeled = labeled[0], unlabeled[0]
                t0 = _add(timing, "training/data", t0)
                ema_before = timing["training/ema"]
                out, total = training_step(method, optimizer, labeled, unlabeled, t, o.grad_clip, amp, extras,
                                           where=f" in run {run_dir} ({_healthy(ckpt_path, run.saved_step)})",
                                           timing=timing)
                for k, v in out.items():
                    run.window.setdefault(k, []).append(float(v.detach()) if isinstance(v, torch.Tensor)
                                                        else float(v))
                run.window.setdefault("loss", []).append(float(total.detach()))
                t0 = _add(timing, "training/step", t0)
                timing["training/step"] -= timing["training/ema"] - ema_before  # the EMA is its own part
                step = t + 1
                if snap is not None:
                    snap(step)
                    t0 = _add(timing, "training/snapshots", t0)
                if step % cfg.train.log_every == 0 or step == T:
                    evaluating = timing["training/periodic evaluation"]
                    row = log_row(cfg, method, device, run, step, lr, timing)
                    log.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
                    t0 = _add(timing, "training/logging", t0)
                    timing["training/logging"] -= timing["training/periodic evaluation"] - evaluating
                if step % cfg.train.checkpoint_every == 0 or step == T:
                    checkpoint(method, optimizer, run, step, ckpt_path, snap.seconds if snap is not None else 0.0)
                    _add(timing, "training/checkpoints", t0)
    finally:
        bar.close()
        log.close()
    return finalize(cfg, method, device, run_dir, run.best, run.train_seconds,
                    snap.seconds if snap is not None else 0.0, progress=talk, timing=timing)


def _healthy(ckpt_path: Path, step: int | None) -> str:
    return f"last healthy checkpoint: {ckpt_path}, iteration {step}" if step is not None else \
        "no healthy checkpoint was saved"


def _images_per_iter(cfg, method) -> int:
    """Training images per iteration (optimiser step) over all ranks and micro-batches
    (labeled + unlabeled streams)."""
    per_pass = cfg.train.batch_labeled + (cfg.train.batch_unlabeled if method.uses_unlabeled else 0)
    world = dist.world_size()
    return per_pass * world * accumulation_steps(cfg.train.global_batch, cfg.train.batch_labeled, world)


def _evaluate(cfg, method, device, progress: bool = False) -> dict:
    """mIoU of the method's evaluation model on ``cfg``'s val set (every rank takes a share;
    ``progress``: a bar over the images).

    Rank-local buffers (BatchNorm statistics of the student and teacher) are first copied
    from rank 0, so the ranks evaluate one model, the one rank 0 saves in ``last.pt``.
    """
    dist.broadcast_state(method, buffers_only=True)
    e = cfg.eval
    val = build_dataset(cfg, "val", train=False)
    method.eval()
    try:
        return evaluate(method.predict, val, cfg.data.num_classes, device, e.mode, e.window or cfg.data.crop_size,
                        e.stride, e.batch_size, e.max_images, progress=progress)
    finally:
        method.train()


class UnlabeledBatches:
    """Re-iterable eval batches of the unlabeled images (this rank's share), on ``device``:
    the images ``indices`` (``finalize`` passes the seeded sample ``evaluate.sample_indices``
    of ``eval.pl_max_images``, the images ``pseudo_label_metrics`` measures), else the first
    ``max_images`` (0: all); ``progress``: a bar over the images of each pass."""

    def __init__(self, dataset, device, batch_size: int, max_images: int = 0, progress: bool = False,
                 indices: list[int] | None = None):
        self.dataset, self.device, self.batch_size, self.progress = dataset, device, batch_size, progress
        if indices is None:
            indices = range(len(dataset) if not max_images else min(max_images, len(dataset)))
        self.indices = list(indices)
        self.n = len(self.indices)

    def __iter__(self):
        from .evaluate import _batches, image_bar

        indices = self.indices[dist.rank()::dist.world_size()]
        bar = image_bar(len(indices), "unlabeled", self.progress)
        for batch in _batches(self.dataset, indices, self.batch_size):
            bar.update(len(batch))
            out = {"image": torch.stack([s["image"] for s in batch]).to(self.device),
                   "id": [s["id"] for s in batch]}
            if "hidden_mask" in batch[0]:
                out["hidden_mask"] = torch.stack([s["hidden_mask"] for s in batch]).to(self.device)
            yield out
        bar.close()


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finalize(cfg, method, device, run_dir: Path, best: dict, train_seconds: float,
             snapshot_seconds: float = 0.0, progress: bool = False, timing: dict | None = None) -> dict:
    """Final evaluation, pseudo-label metrics, figures and ``metrics.json``.

    Each part is a stage (``stages.stage``): with ``progress`` (rank 0) it prints one line
    ``<stage> ... <seconds> s`` to stderr when done, and the loops over images show a bar.
    The stages, those that apply to the run: ``final evaluation``, ``pseudo-label
    measurement`` (unlabeled images with hidden ground truth), ``method measures`` (a method's
    own ``final_metrics``: PRCL's sigma^2 AUROC, CSS's per-source pseudo-labels), ``latent
    measures`` (the last t-SNE snapshot's silhouette and k-NN accuracy) and ``figures``.

    Args:
        snapshot_seconds: the part of ``train_seconds`` spent on latent-space snapshots.
        timing: seconds per stage measured so far (``_train`` passes ``training``, the wall
            clock of this invocation's training loop, periodic evaluations, snapshots and
            checkpoints included); the stages above are added, and the whole dict is written
            into ``metrics.json`` as ``timing`` (seconds, floats >= 0).
    """
    from ..data.loaders import class_names

    timing = dict(timing or {})
    with stage("final evaluation", timing, progress):
        result = _evaluate(cfg, method, device, progress)
    names = class_names(cfg)
    metrics = {
        "method": cfg.method.name, "dataset": cfg.data.dataset, "split": cfg.data.split,
        # the network, when not the default DeepLabV3+: the results table keeps "supervised
        # (segformer)" apart from "supervised"
        "model": "" if cfg.model.name == "deeplabv3plus" else cfg.model.name,
        "n_labeled": n_images(cfg, "labeled"), "seed": cfg.train.seed, "iters": cfg.train.iters,
        "miou": result["miou"], "per_class_iou": dict(zip(names, result["per_class_iou"])),
        "pixel_acc": result["pixel_acc"], "best_miou": max(best["miou"], result["miou"]),
        "best_iter": best["iter"] if best["miou"] > result["miou"] else cfg.train.iters,
        "train_seconds": train_seconds, "snapshot_seconds": snapshot_seconds,
        "images_per_second": _images_per_iter(cfg, method) * cfg.train.iters / max(train_seconds, 1e-9),
        "peak_memory_mb": peak_memory_mb(device), "device": str(device.type), "world_size": dist.world_size(),
        "batch_labeled": cfg.train.batch_labeled,
        "batch_unlabeled": cfg.train.batch_unlabeled if method.uses_unlabeled else 0,
        "accumulation_steps": accumulation_steps(cfg.train.global_batch, cfg.train.batch_labeled, dist.world_size()),
        "s4kit_version": __version__, "git_sha": git_sha(),
    }
    unlabeled_batches = None
    if method.uses_unlabeled:
        unl = build_dataset(cfg, "unlabeled", train=False)
        unlabeled_batches = UnlabeledBatches(unl, device, cfg.eval.batch_size, progress=progress,
                                             indices=sample_indices(len(unl), cfg.eval.pl_max_images))
        if cfg.data.hidden_gt:
            with stage("pseudo-label measurement", timing, progress):
                method.eval()
                metrics.update(pseudo_label_metrics(method.pseudo_labels, unl, device,
                                                    method.opts.confidence_threshold, cfg.eval.batch_size,
                                                    cfg.eval.pl_max_images, progress))
                method.train()
    from ..methods.base import Method

    if type(method).final_metrics is not Method.final_metrics:  # the base class measures nothing
        with stage("method measures", timing, progress):
            method.eval()
            metrics.update(method.final_metrics(unlabeled_batches))
            method.train()
    if dist.rank() == 0 and cfg.viz.snapshots:
        from .latent import final_measures

        with stage("latent measures", timing, progress):
            metrics.update(final_measures(run_dir, seed=cfg.train.seed))
    if dist.rank() == 0:
        if cfg.viz.enabled:
            from .figures import run_figures

            with stage("figures", timing, progress):
                run_figures(cfg, method, device, run_dir, result, names)
        metrics["timing"] = timing
        atomic_write_text(run_dir / "metrics.json", json_dumps(metrics))
    return metrics
