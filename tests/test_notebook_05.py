"""Notebook 05 (AllSpark's channel cross-attention) under papermill: FAST settings in the
default suite, the notebook's own defaults under ``-m slow``."""
import json

import pytest

from conftest import assert_figures_shown, figure_cells, run_notebook

NAME = "05_channel_cross_attention.ipynb"
CHECKS = ["A1 (map_in + GELU) by hand == s4kit", "A2 LayerNorm by hand == s4kit",
          "unlabeled branch (A3-A4) by hand == s4kit", "labeled branch (A5-A6) by hand == s4kit",
          "eval-mode AllSpark (per-image self-attention through the l2u weights) by hand == s4kit",
          "CSG (A7) by hand == s4kit", "semantic memory update (A8) by hand == s4kit",
          "gradients by hand == s4kit's detach", "poly schedule (A10) by hand == s4kit",
          "FIFO by hand == s4kit SemanticMemory (bit for bit)", "loss L (A9) by hand == s4kit",
          "labeled branch on the memory (A6, S = K) by hand == s4kit", "gradient of L by hand == s4kit"]


def _stdout(nb) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))


def _check_executed(nb):
    text = _stdout(nb)
    for check in CHECKS:
        assert check in text, check
    # the solutions are hidden by default and make the exercises' checks pass
    solutions = [c for c in nb["cells"] if "solution" in c.get("metadata", {}).get("tags", [])]
    assert len(solutions) == 2
    assert all(c["metadata"]["jupyter"]["source_hidden"] for c in solutions)
    assert "exercise 1: correct" in text and "exercise 2: correct" in text
    assert "not done yet" not in text
    # every figure cell shows its figure; the attention map has a colourbar
    assert_figures_shown(nb)
    assert any("colorbar" in "".join(c["source"]) for c in figure_cells(nb))
    # equations carry the method page's labels and the page is linked
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "../docs/methods/allspark.md" in markdown
    for label in [f"A{i}" for i in range(1, 11)]:  # \tag: shown, but not a second Sphinx label beside the page's
        assert f"\\tag{{{label}}}" in markdown, label
    return text


def test_notebook_05_headless(tmp_path, digits_root):
    nb = run_notebook(NAME, tmp_path, FAST=True, DATA_ROOT=str(digits_root), DEVICE="cpu")
    text = _check_executed(nb)
    assert "oldest surviving entry" in text


@pytest.mark.slow
def test_notebook_05_exercise_stubs_run_as_is(tmp_path, digits_root):
    """With the solution cells removed, the stubs run and the checks say 'not done yet'."""
    from pathlib import Path

    import papermill

    src = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / NAME).read_text())
    src["cells"] = [c for c in src["cells"] if "solution" not in c.get("metadata", {}).get("tags", [])]
    stub = tmp_path / "stub.ipynb"
    stub.write_text(json.dumps(src))
    papermill.execute_notebook(str(stub), str(tmp_path / "out.ipynb"), progress_bar=False, kernel_name="python3",
                               cwd=str(tmp_path), parameters={"FAST": True, "DATA_ROOT": str(digits_root)})
    text = _stdout(json.loads((tmp_path / "out.ipynb").read_text()))
    assert "exercise 1: not done yet" in text and "exercise 2: not done yet" in text


@pytest.mark.teaching
def test_notebook_05_at_its_defaults(tmp_path, digits_root):
    """The notebook's own defaults (BATCH 8, STEPS 40): every check holds at full size."""
    nb = run_notebook(NAME, tmp_path, DATA_ROOT=str(digits_root))
    text = _check_executed(nb)
    assert "40 training steps" in text


@pytest.mark.slow
def test_notebook_05_has_no_hidden_state(tmp_path, digits_root):
    """Every cell after the setup, run a second time in order in the same kernel, prints the same."""
    from pathlib import Path

    import papermill

    src = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / NAME).read_text())
    first = next(i for i, c in enumerate(src["cells"]) if "fresh()" in "".join(c["source"]))
    again = [dict(c, id=f"again-{i}", metadata={**c["metadata"], "tags": ["again"]})
             for i, c in enumerate(src["cells"][first:]) if c["cell_type"] == "code"]
    src["cells"] = src["cells"] + again
    twice = tmp_path / "twice.ipynb"
    twice.write_text(json.dumps(src))
    papermill.execute_notebook(str(twice), str(tmp_path / "out.ipynb"), progress_bar=False, kernel_name="python3",
                               cwd=str(tmp_path), parameters={"FAST": True, "DATA_ROOT": str(digits_root)})
    cells = [c for c in json.loads((tmp_path / "out.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    n = len(again)
    text = lambda c: "".join("".join(o.get("text", "")) for o in c["outputs"] if o.get("name") == "stdout")
    for one, two in zip(cells[-2 * n:-n], cells[-n:]):
        assert text(one) == text(two), "".join(one["source"])[:200]
