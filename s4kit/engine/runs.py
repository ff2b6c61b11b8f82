"""Re-open a finished (or interrupted) run: its config, its method with ``last.pt`` loaded."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ConfigError, load_config
from ..methods import build_method
from .trainer import _evaluate, load_method_state, resolve_device


def load_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str | None = None):
    """``(cfg, method)`` of a run folder, the method's weights from ``checkpoints/last.pt``.

    ``overrides`` change the saved config (``data.root=...``, ``eval.mode=sliding``).
    Raises ``ConfigError`` if the folder has no ``config.yaml`` or no checkpoint.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: no checkpoint to evaluate")
    dev = resolve_device(device or cfg.device)
    method = build_method(cfg).to(dev)
    load_method_state(method, torch.load(ckpt, map_location=dev, weights_only=False)["method"])
    method.eval()
    return cfg, method


def evaluate_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Evaluate a run's checkpoint on its val set; writes and returns ``eval.json``."""
    cfg, method = load_run(run_dir, overrides)
    device = next(method.parameters()).device
    result = _evaluate(cfg, method, device)
    out = {"method": cfg.method.name, "dataset": cfg.data.dataset, "split": cfg.data.split, "seed": cfg.train.seed,
           "iters": torch.load(Path(run_dir) / "checkpoints" / "last.pt", map_location="cpu",
                               weights_only=False)["step"],
           "eval_mode": cfg.eval.mode, "miou": result["miou"], "pixel_acc": result["pixel_acc"],
           "per_class_iou": result["per_class_iou"]}
    (Path(run_dir) / "eval.json").write_text(json.dumps(out, indent=1))
    return out
