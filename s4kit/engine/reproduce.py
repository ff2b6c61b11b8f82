"""``s4kit reproduce``: execute ``notebooks/reproduce.ipynb`` with papermill into the run folder."""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
PARAMETERS = {"FAST", "MAX_ITERS", "DEVICE", "DATA_ROOT", "OVERRIDES"}


def notebook_path(name: str) -> Path:
    """A notebook of the checkout; ``ConfigError`` if s4kit is not installed from a checkout."""
    path = NOTEBOOK_DIR / name
    if not path.is_file():
        raise ConfigError(f"{path}: notebook not found; install s4kit from its repository (pip install -e .)")
    return path


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


def reproduce(method: str, dataset: str, split: str, seed: int = 0, params: dict | None = None,
              out: str | Path | None = None, progress: bool = False) -> Path:
    """Run the reproduction notebook headlessly; returns the executed notebook's path.

    Args:
        params: extra notebook parameters by name (``FAST``, ``MAX_ITERS``, ``DEVICE``,
            ``DATA_ROOT``, ``OVERRIDES`` a space-separated ``key=value`` list); string
            values are converted to bool/int/float where they parse as such.
        out: the run folder (default ``runs/<dataset>/<method>/<split>/seed<seed>``).

    Raises ``ConfigError`` for an unknown parameter name. A failing cell raises papermill's
    ``PapermillExecutionError``; the executed notebook, with the traceback, stays in the run folder.
    """
    import papermill

    params = dict(params or {})
    unknown = set(params) - PARAMETERS
    if unknown:
        raise ConfigError(f"unknown notebook parameter(s) {sorted(unknown)}; known: {sorted(PARAMETERS)}")
    run_dir = Path(out) if out else default_run_dir(method, dataset, split, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"METHOD": method, "DATASET": dataset, "SPLIT": str(split), "SEED": int(seed),
                  "RUN_DIR": str(run_dir.resolve())}
    parameters.update({k: _typed(v) if isinstance(v, str) else v for k, v in params.items()})
    if "DATA_ROOT" in parameters:
        parameters["DATA_ROOT"] = str(Path(str(parameters["DATA_ROOT"])).resolve())
    target = run_dir / "reproduce.ipynb"
    papermill.execute_notebook(str(notebook_path("reproduce.ipynb")), str(target), parameters=parameters,
                               progress_bar=progress, cwd=str(Path.cwd()), kernel_name="python3")
    return target
