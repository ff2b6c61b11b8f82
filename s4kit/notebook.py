"""Helpers for the notebooks' parameters cells: robust flags and paths that do not depend on
the folder a notebook runs in.

papermill passes ``-p FAST false`` as the *string* ``"false"`` (only ``False`` / ``false`` in
YAML form via ``-y`` becomes a bool), and JupyterLab starts a kernel in the notebook's own
folder, so ``DATA_ROOT = "data/digits"`` would build a second dataset under ``notebooks/``.
Every notebook therefore normalises its parameters right after the parameters cell::

    from s4kit.notebook import flag, home_path
    FAST = flag(FAST)
    DATA_ROOT, RUN_DIR = home_path(DATA_ROOT), home_path(RUN_DIR)
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import S4kitError

__all__ = ["SMOKE_BANNER", "announce", "cached_run", "config_key", "flag", "home", "home_path"]

_TRUE = {"true", "yes", "on", "1", "y", "t"}
_FALSE = {"false", "no", "off", "0", "n", "f", "", "none"}


def flag(value, name: str = "FAST") -> bool:
    """A notebook parameter read as a boolean.

    ``True``, ``1``, ``"true"``, ``"True"``, ``"yes"``, ``"1"`` -> ``True``; ``False``, ``0``,
    ``None``, ``"false"``, ``"no"``, ``"0"``, ``""`` -> ``False`` (strings case-insensitive,
    surrounding blanks ignored).

    The environment variable ``S4KIT_<name>`` (e.g. ``S4KIT_FAST=1``), when set and not empty,
    wins over ``value``: that is how ``make test-book`` executes the whole book at smoke-test
    settings without editing a notebook.

    Raises:
        S4kitError: any other value (e.g. ``"maybe"``, ``2``), naming the parameter (or the
            environment variable).
    """
    env = os.environ.get(f"S4KIT_{name}", "")
    if env.strip():
        return _parse(env, f"S4KIT_{name}")
    return _parse(value, name)


def _parse(value, name: str) -> bool:
    """``flag`` without the environment: the value alone, or ``S4kitError``."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise S4kitError(f"notebook parameter {name}={value!r}: expected true or false")


def home() -> Path:
    """The folder that relative notebook paths resolve against.

    In order: the ``S4KIT_HOME`` environment variable; the repository root when s4kit is
    imported from a checkout (the folder holding ``pyproject.toml`` and ``notebooks/`` next
    to the ``s4kit`` package); otherwise the current working directory (a wheel install).

    Raises:
        S4kitError: ``S4KIT_HOME`` is set but is not a folder.
    """
    env = os.environ.get("S4KIT_HOME")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise S4kitError(f"S4KIT_HOME={env}: not a folder")
        return path.resolve()
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir():
        return root
    return Path.cwd()


def home_path(path: str | os.PathLike) -> Path:
    """``path`` unchanged if absolute (after ``~`` expansion), else ``home() / path``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else home() / p


SMOKE_BANNER = "smoke-test settings (FAST): pictures are not meaningful"


def announce(fast: bool, **paths) -> None:
    """Print where a notebook reads and writes (``name: absolute path``, one per line) and, in
    FAST mode, the one-line banner warning that its pictures come from smoke-test settings."""
    for name, path in paths.items():
        print(f"{name}: {path}")
    if fast:
        print(SMOKE_BANNER)


def config_key(cfg) -> str:
    """A short fingerprint of a resolved config, ``run.dir`` excluded: 10 hex digits of the
    SHA-1 of its YAML. Two configs share a key exactly when they would train the same run."""
    import hashlib

    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    data.get("run", {}).pop("dir", None)
    text = OmegaConf.to_yaml(OmegaConf.create(data))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def cached_run(preset: str, overrides: list[str] | tuple[str, ...], root: str | os.PathLike,
               progress: bool = True) -> Path:
    """Train ``preset`` with ``overrides`` into ``root/<config_key>``, or reuse that run when it
    already finished with this very config (``finished_run``); a killed run resumes.

    Keying the folder by the full config (never by the mere presence of a file) means a FAST
    run is never mistaken for a full one, and notebooks, ``make book`` and ``make demo`` can
    share runs. Returns the run folder.

    Raises:
        ConfigError: an unknown preset or an invalid override (from ``load_config``).
    """
    from .config import load_config
    from .engine.trainer import finished_run, train

    overrides = [o for o in overrides if not o.startswith("run.dir=")]
    key = config_key(load_config(preset, list(overrides)))
    run_dir = Path(root) / key
    cfg = load_config(preset, [*overrides, f"run.dir={run_dir}"])
    if finished_run(cfg) is not None:
        print(f"reusing the finished run {run_dir} (same config)")
    else:
        train(cfg, progress=progress)
    return run_dir
