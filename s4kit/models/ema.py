"""The mean teacher: an exponential moving average of the student's parameters.

Source: docs/methods/substrate.md §3 (ReCo ``module_list.py`` ``EMA``; PRCL/CSS inherit it).
After every optimiser step k = 0, 1, 2, ...:

    d_k = min(1 - 1/(k+1), alpha),   xi <- d_k * xi + (1 - d_k) * theta          (S1)

so after k = 0 the teacher equals the student, and d_k = k/(k+1) warms up to alpha.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` that never receives gradients."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def ema_decay(step: int, alpha: float) -> float:
    """d_k of (S1) for optimiser step ``step`` (0-based)."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, alpha: float = 0.99,
               buffers: str = "own") -> float:
    """Apply (S1) in place and return d_k.

    Args:
        teacher, student: networks with identical structure (unwrap DDP first).
        step: optimiser step k (0-based).
        alpha: the EMA momentum (0.99 in ReCo, PRCL, CSS).
        buffers: BatchNorm running statistics policy (substrate §3.2):
            ``own`` (ReCo-literal: untouched, they follow the teacher's own train-mode
            forwards), ``ema`` (averaged like parameters), ``copy`` (copied from the student).

    Raises ``ValueError`` for an unknown ``buffers`` policy.
    """
    if buffers not in ("own", "ema", "copy"):
        raise ValueError(f"ema buffers={buffers!r}: expected own, ema or copy")
    d = ema_decay(step, alpha)
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(d).add_(ps.detach(), alpha=1.0 - d)
    if buffers != "own":
        for bt, bs in zip(teacher.buffers(), student.buffers()):
            if buffers == "copy" or not torch.is_floating_point(bt):
                bt.copy_(bs)
            else:
                bt.mul_(d).add_(bs, alpha=1.0 - d)
    return d
