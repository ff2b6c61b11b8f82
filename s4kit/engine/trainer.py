"""The trainer: one loop for every method, resumable, seeded, single-process or DDP.

``train(cfg)`` runs ``cfg.train.iters`` iterations of ``method.train_step`` and leaves a
run folder (DESIGN.md "Commands and the run folder")::

    config.yaml  metrics.json  log.csv  checkpoints/last.pt  figures/*.png

Running it again with the same ``run.dir`` resumes from ``checkpoints/last.pt``: model,
teacher, optimiser, RNG states and the log are restored and the data streams restart at
the saved iteration, so (with ``train.deterministic=true`` on CPU) a killed and resumed run
ends with the same metrics as an uninterrupted one.

The learning rate follows the poly schedule with an optional linear warm-up:

    eta_t = max(eta_0 (1 - t/T)^0.9, eta_min)                                      (S11)
"""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__, dist
from ..config import ConfigError, from_yaml, to_yaml
from ..errors import S4kitError
from ..data.loaders import build_dataset, build_train_streams, n_images
from ..methods import build_method
from ..methods.base import unwrap
from .evaluate import evaluate, pseudo_label_metrics
from .logger import CSVLog
from .snapshots import Snapshotter


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
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def prepare_run_dir(cfg) -> Path:
    """Create the run folder and write ``config.yaml``; on resume check it matches.

    Raises ``ConfigError`` if ``run.dir`` holds a run whose config differs (other than
    ``train.iters``, so a finished run can be extended).
    """
    run_dir = Path(cfg.run.dir)
    path = run_dir / "config.yaml"
    if path.exists():
        old = from_yaml(path)
        from omegaconf import OmegaConf

        a, b = OmegaConf.to_container(old), OmegaConf.to_container(cfg)
        a["train"].pop("iters"), b["train"].pop("iters")
        if a != b:
            diff = [k for k in sorted(set(_flatten(a)) | set(_flatten(b))) if _flatten(a).get(k) != _flatten(b).get(k)]
            raise ConfigError(f"{path}: run.dir holds a run with a different config ({', '.join(diff[:6])}); "
                              "use another run.dir or delete the folder")
    if dist.rank() == 0:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "figures").mkdir(exist_ok=True)
        path.write_text(to_yaml(cfg))
    return run_dir


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_checkpoint(path: Path, method, optimizer, step: int, extra: dict) -> None:
    """Atomic write of everything a resume needs.

    ``rng`` is this process's RNG state; under DDP the trainer adds ``rng_per_rank`` (every
    rank's, gathered) so each rank resumes its own random stream (see ``_resume_rng``).
    """
    state = {"step": step, "method": unwrap_state(method), "optimizer": optimizer.state_dict(),
             "rng": _rng_state(), **extra}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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


def load_method_state(method, state: dict) -> None:
    """Load a ``unwrap_state`` dict into a (possibly DDP-wrapped) method, strictly."""
    wrapped = hasattr(method.student, "module")
    if wrapped:
        state = {k.replace("student.", "student.module.", 1) if k.startswith("student.") else k: v
                 for k, v in state.items()}
    method.load_state_dict(state, strict=True)


def train(cfg, progress: bool = True) -> dict:
    """Train ``cfg.method.name`` as configured and return the final metrics (also in metrics.json)."""
    device = resolve_device(cfg.device)
    setup_distributed(device)
    rank, world = dist.rank(), dist.world_size()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed + rank, cfg.train.deterministic)
    run_dir = prepare_run_dir(cfg)
    ckpt_path = run_dir / "checkpoints" / "last.pt"

    method = build_method(cfg).to(device)
    channels_last = device.type == "cuda" and cfg.train.channels_last
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if world > 1:
        if device.type == "cuda" and cfg.model.sync_bn:
            method.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.student)
        method.student = torch.nn.parallel.DistributedDataParallel(
            method.student, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=not method.uses_representation)
        dist.broadcast_state(method)  # the teacher (built before the wrap) and buffers start as rank 0's
    optimizer = build_optimizer(cfg, method.param_groups())

    start, best, train_seconds = 0, {"miou": -1.0, "iter": 0}, 0.0
    window: dict[str, list[float]] = {}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        load_method_state(method, state["method"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, train_seconds = state["step"], state.get("best", best), state.get("train_seconds", 0.0)
        window = state.get("log_window", {})  # losses of iterations since the last log row
        _set_rng_state(_resume_rng(state, rank, world))
        if rank == 0:
            print(f"resuming {run_dir} from iteration {start}", file=sys.stderr)
    log = CSVLog(run_dir / "log.csv", keep_until=start, enabled=rank == 0)

    labeled_it, unlabeled_it = build_train_streams(cfg, start, rank, world, need_unlabeled=method.uses_unlabeled)
    amp = device.type == "cuda" and cfg.train.amp
    o, T = cfg.optim, cfg.train.iters
    from tqdm.auto import tqdm

    snap = Snapshotter(cfg, method, device, run_dir, lambda: build_dataset(cfg, "val", train=False)) \
        if rank == 0 and cfg.viz.snapshots else None
    if snap is not None and ckpt_path.exists():
        snap.seconds = state.get("snapshot_seconds", 0.0)
    bar = tqdm(range(start, T), initial=start, total=T, desc=f"{cfg.method.name}", disable=not (progress and rank == 0),
               mininterval=2.0, dynamic_ncols=True)
    tick = time.time()
    method.train()
    for t in bar:
        lr = poly_lr(o.lr, t, T, o.power, o.min_lr, o.warmup_iters)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        method.iteration = t
        labeled = _to_device(next(labeled_it), device, channels_last)
        unlabeled = _to_device(next(unlabeled_it), device, channels_last) if unlabeled_it is not None else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = method.train_step(labeled, unlabeled)
        losses = {k: v for k, v in out.items() if k.startswith("loss")}
        total = sum(v.float() for v in losses.values())
        if not torch.isfinite(total):
            bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach())}
            raise NonFiniteLossError(f"iteration {t}: non-finite loss {bad} in run {run_dir} "
                                     f"(last checkpoint: {ckpt_path if ckpt_path.exists() else 'none'})")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(method.student.parameters(), o.grad_clip)
        optimizer.step()
        method.after_step(t)
        for k, v in out.items():
            window.setdefault(k, []).append(float(v.detach()) if isinstance(v, torch.Tensor) else float(v))
        window.setdefault("loss", []).append(float(total.detach()))
        step = t + 1
        if snap is not None:
            snap(step)
        if step % cfg.train.log_every == 0 or step == T:
            now = time.time()
            train_seconds += now - tick
            tick = now
            row = {"iter": step, "lr": lr, **{k: float(np.mean(v)) for k, v in window.items()},
                   "images_per_second": _images_per_iter(cfg, method) * step / max(train_seconds, 1e-9)}
            window = {}
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != T:
                row["val_miou"] = _evaluate(cfg, method, device)["miou"]
                if row["val_miou"] > best["miou"]:
                    best = {"miou": row["val_miou"], "iter": step}
                tick = time.time()
            log.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
        if step % cfg.train.checkpoint_every == 0 or step == T:
            train_seconds += time.time() - tick
            tick = time.time()
            dist.broadcast_state(method, buffers_only=True)  # every rank holds the saved model
            extra = {"best": best, "train_seconds": train_seconds, "log_window": window,
                     "snapshot_seconds": snap.seconds if snap is not None else 0.0}
            if world > 1:  # each rank draws its own augmentations and samples: keep every stream
                extra["rng_per_rank"] = dist.all_gather_object(_rng_state())
            if rank == 0:
                save_checkpoint(ckpt_path, method, optimizer, step, extra)
    bar.close()
    return finalize(cfg, method, device, run_dir, best, train_seconds, snap.seconds if snap is not None else 0.0)


def _images_per_iter(cfg, method) -> int:
    """Training images per iteration over all ranks (labeled + unlabeled streams)."""
    per_rank = cfg.train.batch_labeled + (cfg.train.batch_unlabeled if method.uses_unlabeled else 0)
    return per_rank * dist.world_size()


def _evaluate(cfg, method, device) -> dict:
    """mIoU of the method's evaluation model on ``cfg``'s val set (every rank takes a share).

    Rank-local buffers (BatchNorm statistics of the student and teacher) are first copied
    from rank 0, so the ranks evaluate one model, the one rank 0 saves in ``last.pt``.
    """
    dist.broadcast_state(method, buffers_only=True)
    e = cfg.eval
    val = build_dataset(cfg, "val", train=False)
    method.eval()
    try:
        return evaluate(method.predict, val, cfg.data.num_classes, device, e.mode, e.window or cfg.data.crop_size,
                        e.stride, e.batch_size, e.max_images)
    finally:
        method.train()


class UnlabeledBatches:
    """Re-iterable eval batches of the unlabeled images (this rank's share), on ``device``."""

    def __init__(self, dataset, device, batch_size: int, max_images: int = 0):
        self.dataset, self.device, self.batch_size = dataset, device, batch_size
        self.n = len(dataset) if not max_images else min(max_images, len(dataset))

    def __iter__(self):
        from .evaluate import _batches

        for batch in _batches(self.dataset, range(dist.rank(), self.n, dist.world_size()), self.batch_size):
            out = {"image": torch.stack([s["image"] for s in batch]).to(self.device),
                   "id": [s["id"] for s in batch]}
            if "hidden_mask" in batch[0]:
                out["hidden_mask"] = torch.stack([s["hidden_mask"] for s in batch]).to(self.device)
            yield out


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finalize(cfg, method, device, run_dir: Path, best: dict, train_seconds: float,
             snapshot_seconds: float = 0.0) -> dict:
    """Final evaluation, pseudo-label metrics, figures and ``metrics.json``.

    ``snapshot_seconds``: the part of ``train_seconds`` spent on latent-space snapshots."""
    from ..data.datasets import CLASS_NAMES

    result = _evaluate(cfg, method, device)
    names = list(CLASS_NAMES.get(cfg.data.dataset, [str(k) for k in range(cfg.data.num_classes)]))
    if len(names) != cfg.data.num_classes:
        names = [str(k) for k in range(cfg.data.num_classes)]
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
        "s4kit_version": __version__, "git_sha": git_sha(),
    }
    unlabeled_batches = None
    if method.uses_unlabeled:
        unl = build_dataset(cfg, "unlabeled", train=False)
        unlabeled_batches = UnlabeledBatches(unl, device, cfg.eval.batch_size, cfg.eval.pl_max_images)
        if cfg.data.hidden_gt:
            method.eval()
            metrics.update(pseudo_label_metrics(method.pseudo_labels, unl, device, method.opts.confidence_threshold,
                                                cfg.eval.batch_size, cfg.eval.pl_max_images))
            method.train()
    method.eval()
    metrics.update(method.final_metrics(unlabeled_batches))
    method.train()
    if dist.rank() == 0 and cfg.viz.snapshots:
        from .latent import final_measures

        metrics.update(final_measures(run_dir, seed=cfg.train.seed))
    if dist.rank() == 0:
        if cfg.viz.enabled:
            from .figures import run_figures

            run_figures(cfg, method, device, run_dir, result, names)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    return metrics
