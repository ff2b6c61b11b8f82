"""Shared fixtures: a small digits dataset built once per session, tiny configs."""
from __future__ import annotations

import os

import pytest
import torch

from s4kit.data.digits import DigitsSpec, write_digits

# Tests are CPU-only and sized for 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))

SMALL = DigitsSpec(n_train=128, n_val=32)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """A small digits dataset (128 train / 32 val scenes) in the VOC layout with split files."""
    root = tmp_path_factory.mktemp("digits")
    write_digits(root, seed=0, spec=SMALL, progress=False)
    return root


def tiny_overrides(root, run_dir, iters: int = 4) -> list[str]:
    """Overrides that shrink a digits preset to seconds."""
    return [f"data.root={root}", f"run.dir={run_dir}", f"train.iters={iters}", "train.batch_labeled=4",
            "train.batch_unlabeled=4", "train.log_every=2", f"train.checkpoint_every={iters}",
            "eval.batch_size=16", "viz.tsne_pixels=200", "viz.tsne_iters=50",
            "viz.snapshot_pixels=300", "viz.snapshot_images=16",
            "viz.overlays=2", "eval.pl_max_images=16", "device=cpu"]


def run_notebook(name: str, out_dir, **parameters):
    """Execute ``notebooks/<name>`` with papermill (FAST settings are the caller's) and return
    the executed notebook as a dict. A failing cell raises ``PapermillExecutionError``."""
    import json
    from pathlib import Path

    import papermill

    src = Path(__file__).resolve().parents[1] / "notebooks" / name
    out = Path(out_dir) / name
    papermill.execute_notebook(str(src), str(out), parameters=parameters, progress_bar=False, kernel_name="python3",
                               cwd=str(out_dir))
    return json.loads(out.read_text())


def figure_cells(nb: dict) -> list[dict]:
    """The code cells of an executed notebook that draw a figure (``plt.subplots``)."""
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "plt.subplots" in "".join(c["source"])]


def assert_figures_shown(nb: dict) -> None:
    """Every figure cell of an executed notebook shows its figure (an image/png output)."""
    cells = figure_cells(nb)
    shown = [c for c in cells if any("image/png" in o.get("data", {}) for o in c["outputs"])]
    assert cells and len(shown) == len(cells)


def assert_checks_and_exercises_pass(text: str, checks, exercises: int) -> None:
    """Every ``... == s4kit`` check line printed and every exercise check reports 'correct'."""
    for check in checks:
        assert check in text, check
    for k in range(1, exercises + 1):
        assert f"exercise {k}: correct" in text, k
    assert "not done yet" not in text and "not yet" not in text
