"""Notebook 02 (logit- and representation-space supervision) under papermill with tiny settings."""
import json

from conftest import run_notebook, tiny_overrides


def test_notebook_02_headless(tmp_path, digits_root):
    run_dir = tmp_path / "nb02"
    extra = [o for o in tiny_overrides(digits_root, run_dir, iters=6) if not o.startswith(("data.root", "run.dir"))]
    nb = run_notebook("02_logit_and_representation_supervision.ipynb", tmp_path, FAST=True,
                      DATA_ROOT=str(digits_root), RUN_DIR=str(run_dir), DEVICE="cpu", OVERRIDES=" ".join(extra))
    text = json.dumps(nb)
    for check in ("notebook prototypes == s4kit.losses.css.ema_prototypes",
                  "notebook representation-space labels == s4kit.methods.css.label_spaces",
                  "notebook agreement mask == s4kit.losses.css.mix_labels",
                  "notebook indicator and anchor weights == s4kit.losses.css.rep_distribution / anchor_weights"):
        assert check in text
    assert (run_dir / "figures" / "label_sources.png").exists()
    assert (run_dir / "figures" / "label_spaces.png").exists()
    log = (run_dir / "log.csv").read_text().splitlines()[0]
    assert all(f"pl_coverage_{s}" in log for s in ("logit", "rep", "mix"))
