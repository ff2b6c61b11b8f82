"""Notebook 04 (region losses) under papermill with a 12-iteration run."""
import json

from conftest import run_notebook


def test_region_loss_notebook_rebuilds_the_library(digits_root, tmp_path):
    """Every RC²L building block and loss rebuilt by hand in the notebook equals s4kit (a
    failing assert fails its cell); the oracle teacher makes every loss non-trivial."""
    nb = run_notebook("04_region_losses.ipynb", tmp_path, FAST=True, DATA_ROOT=str(digits_root),
                      RUN_DIR=str(tmp_path / "run"), ORACLE=True)
    text = json.dumps(nb)
    for check in ["semantic masks by hand == s4kit", "teacher regions by hand == s4kit",
                  "matching cost and assignment by hand == s4kit", "MAP by hand == s4kit", "RCC by hand == s4kit",
                  "RMC by hand == s4kit", "RFC by hand == s4kit", "SMC by hand == s4kit",
                  "all four losses by hand == RC2L.region_losses"]:
        assert check in text, check
    assert "over 0 images" not in text and "over 0 (image, class)" not in text  # RMC and SMC were exercised
    figure_cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "plt.subplots" in "".join(c["source"])]
    shown = [c for c in figure_cells if any("image/png" in o.get("data", {}) for o in c["outputs"])]
    assert figure_cells and len(shown) == len(figure_cells)
