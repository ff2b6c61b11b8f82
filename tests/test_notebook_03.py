"""Notebook 03 (Gaussian prototypes) under papermill: FAST settings, exercises, re-runs, defaults."""
import json
from pathlib import Path

import pytest

from conftest import run_notebook

NAME = "03_gaussian_prototypes.ipynb"
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / NAME

# every component the notebook rebuilds and asserts equal to s4kit (a failing assert fails the cell)
CHECKS = ("sigma^2 head (P1a)-(P1b) by hand == s4kit", "MLS (P2) by hand == s4kit",
          "prototypes (P4)-(P5) by hand == s4kit", "PRCL loss (P6)-(P7) by hand == s4kit",
          "PRCL gradients by hand == s4kit", "PRCL literal denominator by hand == s4kit",
          "keys detached by hand == s4kit", "ramp-down (P9) by hand == s4kit",
          "variance term (P11) by hand == s4kit", "lambda_c of the run (log.csv",
          "sigma^2 AUROC by hand == sklearn == method.final_metrics")
EXERCISES = ("exercise 1", "exercise 2", "exercise 3")


def _stdout(nb) -> str:
    return "\n".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                     for o in c.get("outputs", []) if o.get("name") == "stdout")


def _run_dir(root: Path) -> Path:
    runs = [p.parent for p in root.glob("*/metrics.json")]
    assert len(runs) == 1, runs
    return runs[0]


def test_exercise_cells_are_laid_out_task_stub_solution_check():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    solutions = [i for i, c in enumerate(cells) if "solution" in c.get("metadata", {}).get("tags", [])]
    assert len(solutions) >= 3
    for i in solutions:
        meta = cells[i]["metadata"]
        assert meta["jupyter"]["source_hidden"] is True and "hide-input" in meta["tags"]
        assert cells[i - 2]["cell_type"] == "markdown" and "Exercise" in "".join(cells[i - 2]["source"])
        assert "None" in "".join(cells[i - 1]["source"])  # the stub runs as it is
        assert "not done yet" in "".join(cells[i + 1]["source"])


def test_notebook_03_headless(tmp_path, digits_root):
    nb = run_notebook(NAME, tmp_path, FAST=True, DATA_ROOT=str(digits_root), RUN_DIR=str(tmp_path / "nb03"),
                      DEVICE="cpu", N_IMAGES=16)
    out = _stdout(nb)
    for check in CHECKS:
        assert check in out, check
    for exercise in EXERCISES:
        assert f"{exercise}: correct" in out, exercise
    assert "FAST run: sigma^2 has barely moved" in out
    metrics = json.loads((_run_dir(tmp_path / "nb03") / "metrics.json").read_text())
    assert metrics["iters"] == 12
    assert metrics["sigma2_error_auroc"] is None or 0.0 <= metrics["sigma2_error_auroc"] <= 1.0
    if metrics["sigma2_error_auroc"] is not None:  # the closing claim prints the run's own value
        assert f"sigma2_error_auroc {metrics['sigma2_error_auroc']:.3f}" in out

    # no hidden state: the notebook again, without the solution cells, on the same run folder:
    # the run is reused (same config), the stubs run and their checks say "not done yet", and
    # every rebuilt component still equals s4kit
    stripped = json.loads(NOTEBOOK.read_text())
    stripped["cells"] = [c for c in stripped["cells"] if "solution" not in c.get("metadata", {}).get("tags", [])]
    again = tmp_path / "again"
    again.mkdir()
    copy = again / f"stripped_{NAME}"
    copy.write_text(json.dumps(stripped))
    import papermill

    papermill.execute_notebook(str(copy), str(again / NAME), progress_bar=False, kernel_name="python3",
                               cwd=str(again), parameters={"FAST": True, "DATA_ROOT": str(digits_root),
                                                           "RUN_DIR": str(tmp_path / "nb03"), "N_IMAGES": 16,
                                                           "DEVICE": "cpu"})
    out2 = _stdout(json.loads((again / NAME).read_text()))
    assert "reusing the finished run" in out2
    for exercise in EXERCISES:
        assert f"{exercise}: not done yet" in out2, exercise
    for check in CHECKS:
        assert check in out2, check
    assert len(list((tmp_path / "nb03").glob("*/metrics.json"))) == 1


@pytest.mark.teaching
def test_notebook_03_default_parameters(tmp_path):
    """The full settings (FAST false, the defaults): only the data and run folders are redirected."""
    nb = run_notebook(NAME, tmp_path, DATA_ROOT=str(tmp_path / "digits"), RUN_DIR=str(tmp_path / "nb03"))
    out = _stdout(nb)
    for check in CHECKS:
        assert check in out, check
    metrics = json.loads((_run_dir(tmp_path / "nb03") / "metrics.json").read_text())
    assert metrics["iters"] == 400 and metrics["miou"] > 10
    assert "smoke-test settings" not in out and "FAST run" not in out
