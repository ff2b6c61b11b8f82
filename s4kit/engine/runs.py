"""Re-open a finished (or interrupted) run: its config, its method with ``last.pt`` loaded; export it."""
from __future__ import annotations

from pathlib import Path


from ..config import ConfigError, load_config, to_yaml
from ..io import atomic_path, atomic_write_text, json_dumps
from .trainer import _evaluate, build_checked, load_checkpoint, load_method_state, resolve_device


CHECKPOINTS = ("last", "best")


def _run_files(run_dir: str | Path, checkpoint: str = "last") -> tuple[Path, Path]:
    """``(config.yaml, checkpoint file)`` of a run folder.

    ``checkpoint``: ``last`` (``checkpoints/last.pt``) or ``best``: ``checkpoints/best.pt`` where
    the folder has one, else ``last.pt`` when ``metrics.json`` says the last iteration was the
    best (``best_iter == iters``: always so for a run evaluated only at its end). The trainer
    itself writes only ``last.pt``.

    Raises ``ConfigError`` (one line, naming the path): no such folder, no ``config.yaml``, no
    checkpoint, or no best checkpoint.
    """
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint {checkpoint!r}: expected last or best")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run folder (no such folder)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    last = run_dir / "checkpoints" / "last.pt"
    if checkpoint == "best":
        best = run_dir / "checkpoints" / "best.pt"
        if best.is_file():
            return run_dir / "config.yaml", best
        import json

        try:
            m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            last_is_best = m.get("iters") is not None and m.get("best_iter") == m.get("iters")
        except (OSError, ValueError, AttributeError):
            last_is_best = False
        if not last_is_best:
            raise ConfigError(f"{best}: no best checkpoint (s4kit keeps checkpoints/last.pt, and metrics.json does "
                              "not say the last iteration was the best); use the last one")
    if not last.is_file():
        raise ConfigError(f"{last}: no checkpoint to evaluate")
    return run_dir / "config.yaml", last


def load_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str | None = None):
    """``(cfg, method)`` of a run folder, the method's weights from ``checkpoints/last.pt``
    (see ``load_run_step``)."""
    cfg, method, _ = load_run_step(run_dir, overrides, device)
    return cfg, method


def load_run_step(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str | None = None,
                  checkpoint: str = "last"):
    """``(cfg, method, step)`` of a run folder, the method's weights from ``checkpoints/last.pt``
    (``checkpoint="best"``: see ``_run_files``), in eval mode on ``device`` (default ``cfg.device``).

    ``overrides`` change the saved config (``data.root=...``, ``eval.mode=sliding``). The
    checkpoint is read once, with ``weights_only=True`` (see ``trainer.load_checkpoint``).

    Raises:
        ConfigError: the folder has no ``config.yaml`` or no checkpoint, or an override is invalid.
        CheckpointError: the checkpoint is corrupt, unsafe, or does not fit the config's method.
    """
    config, ckpt = _run_files(run_dir, checkpoint)
    cfg = load_config(config, list(overrides))
    dev = resolve_device(device or cfg.device)
    method = build_checked(cfg, pretrained=False).to(dev)  # last.pt replaces every encoder weight
    state = load_checkpoint(ckpt, dev)
    load_method_state(method, state["method"], ckpt)
    method.eval()
    return cfg, method, state["step"]


def evaluate_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Evaluate a run's checkpoint on its val set; writes (atomically) and returns ``eval.json``."""
    cfg, method, step = load_run_step(run_dir, overrides)
    device = next(method.parameters()).device
    result = _evaluate(cfg, method, device)
    out = {"method": cfg.method.name, "dataset": cfg.data.dataset, "split": cfg.data.split, "seed": cfg.train.seed,
           "iters": step, "eval_mode": cfg.eval.mode, "miou": result["miou"], "pixel_acc": result["pixel_acc"],
           "per_class_iou": result["per_class_iou"]}
    atomic_write_text(Path(run_dir) / "eval.json", json_dumps(out))
    return out


def export_run(run_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write a run's weights to a ``.safetensors`` file for sharing: tensors only, no code.

    The file holds every tensor of the method's state (student, EMA teacher, prototypes,
    memories: the keys of ``Method.state_dict()``); its metadata holds ``s4kit_config`` (the
    run's ``config.yaml``) and ``step``. Load it back with ``safetensors.torch.load_file``
    and ``method.load_state_dict(tensors)`` on ``build_method(load_config(<that config>))``.

    Raises:
        ConfigError: not a run folder, or ``out`` exists (pass ``force=True`` to replace it).
        CheckpointError: the checkpoint is corrupt or unsafe.
    """
    from safetensors.torch import save_file

    config, ckpt = _run_files(run_dir)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: expected a file name ending in .safetensors")
    if out.exists() and not force:
        raise ConfigError(f"{out}: exists; s4kit does not overwrite it (pass --force to replace it)")
    cfg = load_config(config)
    state = load_checkpoint(ckpt, "cpu")
    tensors = {k: v.detach().contiguous().clone() for k, v in state["method"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"s4kit_config": to_yaml(cfg), "step": str(state["step"]),
                                               "format": "s4kit method state_dict"})
    return out
