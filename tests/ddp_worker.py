"""``torchrun ... tests/ddp_worker.py [--freeze-bn] PRESET key=value ...``: train like ``s4kit.run
train``, but instead of the final evaluation every rank saves its own method state
(``unwrap_state``) to ``<run.dir>/rank<r>.pt``, so a test can compare the ranks' weights.

``--freeze-bn``: every BatchNorm of the method (student and teacher) stays in eval mode with
frozen affine parameters (``build_frozen``), so runs that split a batch differently over
processes and micro-batches can be compared weight for weight."""
import sys
import types

import torch

from s4kit import dist
from s4kit.config import load_config
from s4kit.engine import trainer


def save_rank_state(cfg, method, device, run_dir, *args, **kwargs) -> dict:
    torch.save(trainer.unwrap_state(method), run_dir / f"rank{dist.rank()}.pt")
    return {}


def _stay_in_eval(self, mode: bool = True):
    self.training = False
    return self


def freeze_batchnorm(method, images: torch.Tensor):
    """Every BatchNorm of ``method``: running statistics set to those of ``images`` (B, 3, H, W)
    through the student and the teacher (at initialisation, var = 1 would shrink the logits to
    a uniform softmax), then used and never updated (``train()`` is a no-op on it), weight and
    bias without gradients. Returns ``method``."""
    bns = [m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets the statistics of ``images``
    with torch.no_grad():
        for part in (method.student, method.teacher):
            if part is not None:
                part.train()
                part(images)
    for m in bns:
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.requires_grad_(False)
            m.training = False
            m.train = types.MethodType(_stay_in_eval, m)
    return method


def build_frozen(cfg):
    """``trainer.build_checked`` with BatchNorm frozen at the statistics of the first 8 labeled
    images (the same on every rank)."""
    from s4kit.data.loaders import build_dataset

    labeled = build_dataset(cfg, "labeled", train=False)
    images = torch.stack([labeled[i]["image"] for i in range(8)])
    return freeze_batchnorm(_build_checked(cfg), images)


_build_checked = trainer.build_checked

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--freeze-bn":
        trainer.build_checked = build_frozen
        args = args[1:]
    trainer.finalize = save_rank_state
    trainer.train(load_config(args[0], args[1:]), progress=False)
