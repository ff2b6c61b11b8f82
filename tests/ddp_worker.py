"""``torchrun ... tests/ddp_worker.py PRESET key=value ...``: train like ``s4kit.run train``, but
instead of the final evaluation every rank saves its own method state (``unwrap_state``) to
``<run.dir>/rank<r>.pt``, so a test can compare the ranks' weights."""
import sys

import torch

from s4kit import dist
from s4kit.config import load_config
from s4kit.engine import trainer


def save_rank_state(cfg, method, device, run_dir, *args, **kwargs) -> dict:
    torch.save(trainer.unwrap_state(method), run_dir / f"rank{dist.rank()}.pt")
    return {}


if __name__ == "__main__":
    trainer.finalize = save_rank_state
    trainer.train(load_config(sys.argv[1], sys.argv[2:]), progress=False)
