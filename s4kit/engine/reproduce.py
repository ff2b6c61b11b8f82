"""``s4kit reproduce``: execute ``notebooks/reproduce.ipynb`` with papermill into the run folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import ConfigError
from .stages import TEXT_BARS

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when s4kit runs from one
NOTEBOOK_DIR = CHECKOUT / "notebooks"
PARAMETERS = {"FAST", "MAX_ITERS", "DEVICE", "DATA_ROOT", "OVERRIDES"}


def notebook_path(name: str) -> Path:
    """The notebook ``name`` (``reproduce.ipynb``): the checkout's ``notebooks/`` when s4kit runs
    from its repository (a ``pyproject.toml`` beside it), else the copy a wheel installs as
    package data (``s4kit/notebooks``, see pyproject.toml).

    Raises ``ConfigError`` naming both places when neither holds it.
    """
    if (CHECKOUT / "pyproject.toml").is_file() and (NOTEBOOK_DIR / name).is_file():
        return NOTEBOOK_DIR / name
    from importlib.resources import files

    installed = files("s4kit") / "notebooks" / name
    if installed.is_file():
        return Path(str(installed))
    raise ConfigError(f"{name}: notebook not found in {NOTEBOOK_DIR} nor in {installed}; reinstall s4kit "
                      "(pip install s4kit from its repository)")


def _typed(value: str):
    """'true' -> True, '12' -> 12, '0.5' -> 0.5, anything else stays a string."""
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def default_run_dir(method: str, dataset: str, split: str, seed: int) -> Path:
    """``runs/<dataset>/<method>/<split>/seed<seed>``."""
    return Path("runs") / dataset / method / split / f"seed{seed}"


NOTEBOOK_DEFAULTS = {"FAST": False, "MAX_ITERS": 0, "DEVICE": "auto", "DATA_ROOT": "data/digits", "OVERRIDES": ""}


def check_request(method: str, dataset: str, split: str, seed: int, params: dict, run_dir: Path):
    """Validate a reproduction completely, touching no file; returns the config it will train.

    Checks the parameter names and types, that ``<dataset>/<method>`` is a preset, the
    split, every override (through ``load_config``), the method's options (by building it),
    that ``DATA_ROOT`` may receive the digits dataset, and that ``run_dir`` is new, empty
    or an s4kit run folder.

    Raises ``ConfigError`` / ``DataError`` (one line) for the first problem found.
    """
    from ..config import FAST_OVERRIDES, available_presets, load_config
    from ..data.digits import SPLITS, check_digits_root
    from .trainer import build_checked, check_run_dir

    unknown = set(params) - PARAMETERS
    if unknown:
        raise ConfigError(f"unknown notebook parameter(s) {sorted(unknown)}; known: {sorted(PARAMETERS)}")
    p = {**NOTEBOOK_DEFAULTS, **params}
    types = {"FAST": bool, "MAX_ITERS": int, "DEVICE": str, "DATA_ROOT": str, "OVERRIDES": str}
    for key, kind in types.items():
        if not isinstance(p[key], kind) or (kind is int and isinstance(p[key], bool)):
            raise ConfigError(f"-p {key} {p[key]!r}: expected {'true or false' if kind is bool else kind.__name__}")
    if p["MAX_ITERS"] < 0:
        raise ConfigError(f"-p MAX_ITERS {p['MAX_ITERS']}: expected 0 (the preset's) or a positive number")
    if f"{dataset}/{method}" not in available_presets():
        datasets = sorted({n.split("/")[0] for n in available_presets()})
        if dataset not in datasets:
            raise ConfigError(f"--dataset {dataset!r}: unknown; known: {', '.join(datasets)}")
        methods = [n.split("/")[1] for n in available_presets() if n.startswith(dataset + "/")]
        raise ConfigError(f"--method {method!r}: no {dataset} preset; known: {', '.join(methods)}")
    if seed < 0:
        raise ConfigError(f"--seed {seed}: expected a non-negative number")
    overrides = [f"data.root={p['DATA_ROOT']}", f"data.split={split}", f"train.seed={seed}", f"run.dir={run_dir}",
                 f"device={p['DEVICE']}"] + (FAST_OVERRIDES if p["FAST"] else []) + \
        ([f"train.iters={p['MAX_ITERS']}"] if p["MAX_ITERS"] else []) + p["OVERRIDES"].split()
    cfg = load_config(f"{dataset}/{method}", overrides)
    if dataset == "digits":
        if split not in SPLITS:
            raise ConfigError(f"--split {split!r}: digits has splits {', '.join(SPLITS)}")
    build_checked(cfg)
    if dataset == "digits":
        check_digits_root(p["DATA_ROOT"], accept_any=True)
    check_run_dir(run_dir)
    return cfg


def reproduce(method: str, dataset: str, split: str, seed: int = 0, params: dict | None = None,
              out: str | Path | None = None, progress: bool = True) -> Path:
    """Run the reproduction notebook headlessly; returns the executed notebook's path.

    With ``progress`` (the default: ``s4kit reproduce``) it shows as it goes, on this
    process's stdout/stderr: the executed notebook's path first, papermill's bar over the
    cells, and what the cells print (the config, the training bar as text, the stage lines,
    the metrics); papermill's ``stdout_file`` / ``stderr_file`` stream the cells' output as it
    comes (its ``log_output`` would send it through ``logging``, which shows nothing unless
    configured). ``progress=False`` prints nothing.

    Args:
        params: extra notebook parameters by name (``FAST``, ``MAX_ITERS``, ``DEVICE``,
            ``DATA_ROOT``, ``OVERRIDES`` a space-separated ``key=value`` list); string
            values are converted to bool/int/float where they parse as such.
        out: the run folder (default ``runs/<dataset>/<method>/<split>/seed<seed>``).

    Everything is validated (``check_request``) before any folder is created or written.

    Raises:
        ConfigError, DataError: a bad method, dataset, split, parameter or override, a
            ``DATA_ROOT`` or run folder s4kit did not make (nothing is written then).
        S4kitError: a cell of the notebook failed (the message names the executed notebook,
            which stays in the run folder with the traceback, and the cell's error).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ..errors import S4kitError
    from .trainer import claim_run_dir

    params = {k: _typed(v) if isinstance(v, str) else v for k, v in (params or {}).items()}
    if "OVERRIDES" in params:
        params["OVERRIDES"] = str(params["OVERRIDES"])
    if "DATA_ROOT" in params:
        params["DATA_ROOT"] = str(Path(str(params["DATA_ROOT"])).resolve())
    run_dir = (Path(out) if out else default_run_dir(method, dataset, split, seed)).resolve()
    check_request(method, dataset, str(split), seed, params, run_dir)
    notebook = notebook_path("reproduce.ipynb")
    claim_run_dir(run_dir)
    parameters = {"METHOD": method, "DATASET": dataset, "SPLIT": str(split), "SEED": int(seed),
                  "RUN_DIR": str(run_dir), **params}
    target = run_dir / "reproduce.ipynb"
    if progress:
        print(f"executing {notebook} into {target}", file=sys.stderr, flush=True)
    saved = os.environ.get(TEXT_BARS)
    if progress:
        os.environ[TEXT_BARS] = "1"  # the kernel inherits it: text bars reach stderr_file
    try:
        papermill.execute_notebook(str(notebook), str(target), parameters=parameters, progress_bar=progress,
                                   stdout_file=sys.stdout if progress else None,
                                   stderr_file=sys.stderr if progress else None,
                                   cwd=str(Path.cwd()), kernel_name="python3")
    except PapermillExecutionError as exc:
        evalue = (str(exc.evalue).strip().splitlines() or [""])[0]
        raise S4kitError(f"{target}: cell {exc.exec_count} raised {exc.ename}: {evalue}") from None
    finally:
        if saved is None:
            os.environ.pop(TEXT_BARS, None)
        else:
            os.environ[TEXT_BARS] = saved
    return target
