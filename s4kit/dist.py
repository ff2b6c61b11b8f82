"""Thin torch.distributed helpers that work unchanged in a single process.

Under ``torchrun`` the environment carries RANK, WORLD_SIZE and LOCAL_RANK; the trainer
initialises the process group (NCCL on CUDA, gloo on CPU). Without it every helper is
the identity, so methods can call them unconditionally.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (in place; returned for chaining)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (N_r, ...) from every rank along dim 0; N_r may differ per rank.

    The result is detached from autograd (gathered tensors carry no gradient).
    """
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes),) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def broadcast_state(module: torch.nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Copy ``module``'s parameters and buffers (or only its buffers) from rank ``src`` to
    every rank, in place.

    DDP keeps the *parameters* of the module it wraps equal on every rank, but not what it
    does not wrap (an EMA teacher built before the wrap from a rank-local initialisation) nor
    rank-local buffers (BatchNorm running statistics with ``broadcast_buffers=False`` and
    no SyncBN, as on CPU). The trainer calls this once after wrapping (everything) and
    before every evaluation and checkpoint (buffers), so that every rank evaluates, and
    rank 0 saves, the same model; mmsegmentation's ``DistEvalHook(broadcast_bn_buffer=True)``
    does the same before evaluating. The identity outside a process group.
    """
    if not is_distributed():
        return
    tensors = list(module.buffers()) if buffers_only else list(module.parameters()) + list(module.buffers())
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` outside a process group); picklable objects."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable object from ``src`` to every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_gradients(params: list[torch.Tensor]) -> None:
    """DDP's gradient average, for parameters DDP does not wrap, in one all-reduce.

    After it every rank holds the same ``p.grad``: the mean over ranks of the local gradients,
    a rank that left ``p.grad`` None (the head unused on its batch) counting as zeros; where no
    rank has a gradient ``p.grad`` stays None, as in a single process, so the optimiser skips
    ``p`` (no weight decay or momentum step) on every rank alike. The parameters must share one
    dtype and device, and every rank must call it with the same list (it is a collective). The
    identity outside a process group.
    """
    if not is_distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    used = torch.tensor([float(p.grad is not None) for p in params], dtype=params[0].dtype, device=params[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [used])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    chunks = flat[:-len(params)].split([p.numel() for p in params])
    for p, g, n in zip(params, chunks, flat[-len(params):].tolist()):
        p.grad = (g / world_size()).view_as(p).clone() if n > 0 else None


def no_sync(module: torch.nn.Module, skip: bool):
    """Context in which DDP does not all-reduce the gradients of ``module``'s backward passes.

    Gradient accumulation: on every micro-batch but the last of an optimiser step (``skip``
    True) each rank only adds the local gradients into ``p.grad``; the last backward, outside
    the context, all-reduces the sums once. ``contextlib.nullcontext()`` when ``skip`` is
    False or ``module`` is not wrapped in ``DistributedDataParallel`` (one process).
    """
    if skip and isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()
