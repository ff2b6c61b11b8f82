"""Notebook 01 (mean teacher, pseudo-labels, L_u, ReCo, one whole iteration) under papermill:
every rebuilt piece is asserted equal to s4kit inside the notebook (values and gradients),
the exercises' checks pass with the hidden solutions and say "not done yet" without them;
``s4kit.notebook.eval_mode``; the default settings (and a rerun reusing its teacher) in a
slow test."""
import json
from pathlib import Path

import pytest
import torch

from s4kit.notebook import eval_mode

from conftest import assert_checks_and_exercises_pass, assert_figures_shown, run_notebook
from test_notebook_00 import check_exercise_layout, run_without_solutions, stdout_of

NAME = "01_mean_teacher_and_pixel_contrast.ipynb"
SOURCE = Path(__file__).resolve().parents[1] / "notebooks" / NAME
CHECKS = ["EMA by hand == s4kit", "pseudo-labels by hand == s4kit",
          "pseudo-label precision and coverage by hand == s4kit",
          "per-group precision and coverage by hand == s4kit",
          "L_u weighted (S4) by hand == s4kit", "L_u masked (U2) by hand == s4kit",
          "both unsupervised losses by hand == s4kit",
          "prototypes (S5) by hand == s4kit", "ReCo loss by hand", "ReCo gradient by hand == s4kit",
          "one iteration by hand == s4kit training_step"]
EXERCISES = 3


def test_eval_mode_restores_every_submodule_flag_even_on_error():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    net.train()
    net[1].eval()  # a mixed state must come back as it was
    before = [m.training for m in net.modules()]
    with eval_mode(net) as m:
        assert m is net and not any(x.training for x in net.modules())
    assert [m.training for m in net.modules()] == before
    other = torch.nn.Linear(2, 2).eval()
    with pytest.raises(RuntimeError), eval_mode(net, other):
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before and not other.training


def test_notebook_01_exercises_are_task_stub_hidden_solution_check():
    check_exercise_layout(json.loads(SOURCE.read_text()), EXERCISES)


def test_notebook_01_rebuilds_the_library(digits_root, tmp_path):
    run_dir = tmp_path / "runs"
    nb = run_notebook(NAME, tmp_path, FAST=True, DATA_ROOT=str(digits_root), RUN_DIR=str(run_dir))
    text = stdout_of(nb)
    assert_checks_and_exercises_pass(text, CHECKS, EXERCISES)
    assert "teacher: 12 supervised iterations" in text  # the FAST run, kept under its config key
    assert len([p for p in run_dir.iterdir() if (p / "metrics.json").exists()]) == 1
    assert_figures_shown(nb)
    # the stubs alone run through and say so; the FAST teacher is reused (same config)
    text = stdout_of(run_without_solutions(SOURCE, tmp_path, FAST=True, DATA_ROOT=str(digits_root),
                                           RUN_DIR=str(run_dir)))
    assert text.count("not done yet") == EXERCISES
    assert "reusing the finished run" in text and all(check in text for check in CHECKS)


@pytest.mark.teaching
def test_notebook_01_at_its_default_parameters_then_again(tmp_path):
    """FAST off: the full dataset and the ITERS-iteration teacher in temporary folders; a second
    run reuses that teacher and prints the same checks and numbers (no hidden state)."""
    params = {"DATA_ROOT": str(tmp_path / "digits"), "RUN_DIR": str(tmp_path / "runs")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = stdout_of(run_notebook(NAME, tmp_path / "a", **params))
    assert "smoke-test" not in first and "teacher: 800 supervised iterations" in first
    assert all(check in first for check in CHECKS)
    second = stdout_of(run_notebook(NAME, tmp_path / "b", **params))
    assert "reusing the finished run" in second
    keep = [line for line in first.splitlines() if "==" in line or "exercise" in line]
    assert keep and all(line in second for line in keep)
