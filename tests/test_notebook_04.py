"""Notebook 04 (region losses) under papermill: FAST (12-iteration run) in the suite, the default
settings and a run without the exercise solutions under ``-m slow``."""
import json

import nbformat
import pytest

from conftest import assert_figures_shown, run_notebook

NAME = "04_region_losses.ipynb"
CHECKS = ["semantic masks by hand == s4kit", "teacher regions by hand == s4kit",
          "matching cost and assignment by hand == s4kit", "set loss by hand == s4kit", "MAP by hand == s4kit",
          "RCC by hand == s4kit", "RMC by hand == s4kit", "RFC by hand == s4kit", "SMC by hand == s4kit",
          "all four losses by hand == RC2L.region_losses", "stop-gradient checked",
          "exercise 1: RCC with the run's teacher by hand == s4kit",
          "exercise 2: RMC term of one pair by hand == s4kit",
          "exercise 3: regions at gamma = 0.5 by hand == s4kit"]


def outputs_text(nb: dict, streams=("stdout", "stderr")) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]
                   if o.get("name", "stdout") in streams)



def test_region_loss_notebook_rebuilds_the_library(digits_root, tmp_path):
    """Every RC²L building block and loss rebuilt by hand equals s4kit in value and gradient (a
    failing assert fails its cell), the exercises' checks pass with the solutions, and with
    ORACLE="auto" the notebook says that the 12-iteration teacher finds too few regions and why."""
    nb = run_notebook(NAME, tmp_path, FAST=True, DATA_ROOT=str(digits_root), RUN_DIR=str(tmp_path / "run"))
    text = outputs_text(nb)
    for check in CHECKS:
        assert check in text, check
    assert "not done yet" not in text and "not equal yet" not in text
    assert "UserWarning" not in text  # no warnings in the outputs (e.g. float() of a tensor that requires grad)
    assert "the run's teacher finds N^t = [" in text and "-> the checks below use the ORACLE teacher" in text
    assert "with the run's teacher:" in text
    assert "over 0 images" not in text and "over 0 (image, class)" not in text  # RMC and SMC were exercised
    assert_figures_shown(nb)


def test_exercises_are_task_stub_hidden_solution_check():
    nb = nbformat.read(str(__import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks" / NAME), 4)
    cells = nb.cells
    solutions = [i for i, c in enumerate(cells) if "solution" in c.metadata.get("tags", [])]
    assert len(solutions) >= 2
    for i in solutions:
        assert cells[i].metadata["jupyter"]["source_hidden"] is True and "hide-input" in cells[i].metadata["tags"]
        assert cells[i - 2].cell_type == "markdown" and "Exercise" in cells[i - 2].source
        assert cells[i - 1].cell_type == "code" and "= None" in cells[i - 1].source
        assert "not done yet" in cells[i + 1].source and "== s4kit" in cells[i + 1].source


def _without_solutions(tmp_path):
    src = __import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks" / NAME
    nb = nbformat.read(str(src), 4)
    nb.cells = [c for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    out = tmp_path / "stubs.ipynb"
    nbformat.write(nb, str(out))
    return out


@pytest.mark.slow
def test_region_loss_notebook_without_solutions_and_rerun(digits_root, tmp_path):
    """The unfilled stubs run and their checks say "not done yet"; a second execution that reuses
    the cached run prints the same checked values as the first (no state carried between runs)."""
    import papermill

    first = run_notebook(NAME, tmp_path, FAST=True, DATA_ROOT=str(digits_root), RUN_DIR=str(tmp_path / "run"))
    stubs = _without_solutions(tmp_path)
    papermill.execute_notebook(str(stubs), str(tmp_path / "stubs_out.ipynb"), progress_bar=False,
                               kernel_name="python3", cwd=str(tmp_path),
                               parameters={"FAST": True, "DATA_ROOT": str(digits_root), "RUN_DIR": str(tmp_path / "run")})
    second = json.loads((tmp_path / "stubs_out.ipynb").read_text())
    text = outputs_text(second)
    assert "reusing the finished run" in text
    for k in (1, 2, 3):
        assert f"exercise {k}: not done yet" in text
    lines = lambda nb: [line for line in outputs_text(nb, ("stdout",)).splitlines() if "by hand == s4kit" in line
                        and not line.startswith("exercise")]
    assert lines(first) == lines(second) and len(lines(first)) >= 10


@pytest.mark.teaching
def test_region_loss_notebook_at_default_settings(tmp_path):
    """The notebook at its default parameters (ITERS, ORACLE="auto"); only the data and run folders
    are temporary. About 3-5 minutes on 2 idle cores (a 200-iteration rc2l run)."""
    nb = run_notebook(NAME, tmp_path, DATA_ROOT=str(tmp_path / "digits"), RUN_DIR=str(tmp_path / "run"))
    text = outputs_text(nb)
    for check in CHECKS:
        assert check in text, check
    assert "smoke-test settings" not in text and "200 iterations" in text
    assert "the run's teacher finds N^t = [" in text
    assert_figures_shown(nb)
