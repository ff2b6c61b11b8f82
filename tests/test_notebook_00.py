"""Notebook 00 (data, splits, views, mixing, mIoU) under papermill: every rebuilt piece is
asserted equal to s4kit inside the notebook, the exercises' checks pass with the hidden
solutions and say "not done yet" without them; the default (full) settings in a slow test."""
import json
from pathlib import Path

import nbformat
import papermill
import pytest

from conftest import assert_checks_and_exercises_pass, assert_figures_shown, run_notebook

NAME = "00_data_and_splits.ipynb"
SOURCE = Path(__file__).resolve().parents[1] / "notebooks" / NAME
CHECKS = ["weak view by hand == s4kit", "strong view by hand == s4kit", "CutMix by hand == s4kit",
          "ClassMix by hand == s4kit", "mIoU by hand == s4kit.metrics.miou"]
EXERCISES = 3


def exercise_cells(nb):
    """``(task, stub, solution, check)`` cell groups: a solution cell and its three neighbours."""
    cells = nb["cells"]
    return [tuple(cells[i - 2:i + 2]) for i, c in enumerate(cells) if "solution" in c["metadata"].get("tags", [])]


def check_exercise_layout(nb, count):
    groups = exercise_cells(nb)
    assert len(groups) == count
    for task, stub, solution, check in groups:
        assert task["cell_type"] == "markdown" and "Exercise" in "".join(task["source"])
        assert stub["cell_type"] == "code" and "= None" in "".join(stub["source"])
        assert solution["metadata"]["jupyter"]["source_hidden"] is True
        assert "hide-input" in solution["metadata"]["tags"]
        assert "not done yet" in "".join(check["source"])


def stdout_of(nb) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")


def run_without_solutions(source: Path, tmp_path, **parameters) -> dict:
    nb = nbformat.read(source, 4)
    nb.cells = [c for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    stripped = tmp_path / f"stubs_{source.name}"
    nbformat.write(nb, stripped)
    out = tmp_path / f"out_{source.name}"
    papermill.execute_notebook(str(stripped), str(out), parameters=parameters, progress_bar=False,
                               kernel_name="python3", cwd=str(tmp_path))
    return json.loads(out.read_text())


def test_notebook_00_exercises_are_task_stub_hidden_solution_check():
    check_exercise_layout(json.loads(SOURCE.read_text()), EXERCISES)


def test_notebook_00_rebuilds_the_library(digits_root, tmp_path):
    nb = run_notebook(NAME, tmp_path, FAST=True, DATA_ROOT=str(digits_root))
    text = stdout_of(nb)
    assert_checks_and_exercises_pass(text, CHECKS, EXERCISES)
    assert_figures_shown(nb)


def test_notebook_00_stubs_run_and_say_not_done_yet(digits_root, tmp_path):
    text = stdout_of(run_without_solutions(SOURCE, tmp_path, FAST=True, DATA_ROOT=str(digits_root)))
    assert text.count("not done yet") == EXERCISES
    assert all(check in text for check in CHECKS)


@pytest.mark.teaching
def test_notebook_00_at_its_default_parameters(tmp_path):
    """FAST off, the full digits dataset built into a temporary folder."""
    nb = run_notebook(NAME, tmp_path, DATA_ROOT=str(tmp_path / "digits"))
    text = stdout_of(nb)
    assert "smoke-test" not in text
    assert all(check in text for check in CHECKS)
    assert all(f"exercise {k}: correct" in text for k in range(1, EXERCISES + 1))
