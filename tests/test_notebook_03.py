"""Notebook 03 (Gaussian prototypes) under papermill with tiny settings."""
import json

from conftest import run_notebook


def test_notebook_03_headless(tmp_path, digits_root):
    nb = run_notebook("03_gaussian_prototypes.ipynb", tmp_path, FAST=True, DATA_ROOT=str(digits_root),
                      RUN_DIR=str(tmp_path / "nb03"), DEVICE="cpu", N_IMAGES=16)
    text = json.dumps(nb)
    for check in ("notebook sigma^2 == s4kit ProbabilityHead", "notebook MLS == s4kit.losses.prcl.mls",
                  "notebook prototypes == s4kit.losses.prcl.distribution_prototypes"):
        assert check in text
    assert "== sklearn == method.final_metrics" in text or "AUROC undefined" in text
    metrics = json.loads((tmp_path / "nb03" / "metrics.json").read_text())
    assert 0.0 <= metrics["sigma2_error_auroc"] <= 1.0
