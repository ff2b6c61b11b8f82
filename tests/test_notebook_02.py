"""Notebook 02 (logit- and representation-space supervision) under papermill: FAST with tiny
settings (every "by hand == s4kit" check, the exercises with and without their solutions, a
second run reusing the first run's folder with the same printed values), and, marked slow,
its default parameters."""
import json
import re

import pytest

from conftest import run_notebook, tiny_overrides

NAME = "02_logit_and_representation_supervision.ipynb"
CHECKS = ("prototypes (C1) by hand == s4kit.losses.css.ema_prototypes",
          "representation-space labels (C2) by hand == s4kit.methods.css.label_spaces",
          "confidence ceilings (C4, C5) by hand == s4kit.losses.css.max_rep_confidence",
          "mix labels (C6) by hand == s4kit.losses.css.mix_labels",
          "indicator (C3) by hand == s4kit.losses.css.rep_distribution",
          "anchor weights by hand == s4kit.losses.css.anchor_weights",
          "contrast L_c (C7) by hand == s4kit.losses.css.css_contrast_loss",
          "gradient of L_c by hand == s4kit",
          "prototypes and indicator detached by hand == s4kit",
          "lambda_c (C8, global ramp-down) by hand == s4kit.losses.css.contrast_rampdown")


def _outputs(nb: dict) -> list[str]:
    """The text each code cell printed (stream outputs), one string per code cell."""
    return ["".join("".join(o.get("text", "")) for o in c.get("outputs", []) if o.get("output_type") == "stream")
            for c in nb["cells"] if c["cell_type"] == "code"]


def _run_without_solutions(tmp_path, **parameters) -> dict:
    """Execute a copy of the notebook with its solution cells removed (the learner's view)."""
    from pathlib import Path

    import papermill

    src = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / NAME).read_text())
    src["cells"] = [c for c in src["cells"] if "solution" not in c.get("metadata", {}).get("tags", [])]
    stub = tmp_path / "stubs" / NAME
    stub.parent.mkdir()
    stub.write_text(json.dumps(src))
    out = tmp_path / "stubs" / ("out_" + NAME)
    papermill.execute_notebook(str(stub), str(out), parameters=parameters, progress_bar=False,
                               kernel_name="python3", cwd=str(tmp_path))
    return json.loads(out.read_text())


def test_notebook_02_headless(tmp_path, digits_root):
    run_dir = tmp_path / "nb02"
    extra = [o for o in tiny_overrides(digits_root, run_dir, iters=6) if not o.startswith(("data.root", "run.dir"))]
    params = dict(FAST=True, DATA_ROOT=str(digits_root), RUN_DIR=str(run_dir), DEVICE="cpu", OVERRIDES=" ".join(extra))
    nb = run_notebook(NAME, tmp_path, **params)
    text = "\n".join(_outputs(nb))
    for check in CHECKS:
        assert check in text, check
    assert "exercise 1 passed" in text and "exercise 2 passed" in text
    assert "not done yet" not in text
    figure_cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "plt.subplots" in "".join(c["source"])]
    assert len(figure_cells) == 2 and all(any("image/png" in o.get("data", {}) for o in c["outputs"])
                                          for c in figure_cells)
    assert "findfont" not in json.dumps(nb) and "No artists with labels" not in json.dumps(nb)  # no legend warning
    runs = [p for p in run_dir.iterdir() if (p / "config.yaml").exists()]
    assert len(runs) == 1  # cached_run: RUN_DIR/<config key>
    assert (runs[0] / "figures" / "label_sources.png").exists()
    assert (runs[0] / "figures" / "label_spaces.png").exists()
    assert (runs[0] / "figures" / "label_sources_per_class.png").exists()
    log = (runs[0] / "log.csv").read_text().splitlines()[0]
    assert all(f"pl_coverage_{s}" in log for s in ("logit", "rep", "mix"))

    # the learner's view: stubs unfilled, checks say so; the finished run is reused, and every
    # cell prints what it printed the first time (no hidden state; modes restored)
    again = _run_without_solutions(tmp_path, **params)
    text2 = "\n".join(_outputs(again))
    assert "reusing the finished run" in text2
    assert text2.count("not done yet") == 2
    for check in CHECKS:
        assert check in text2, check
    pattern = re.compile(r"^(hard anchors|hard at delta_s|cut |the spaces agree|contrast_weight ).*$", re.M)
    assert pattern.findall(text) and pattern.findall(text) == pattern.findall(text2)


@pytest.mark.teaching
def test_notebook_02_default_parameters(tmp_path):
    """The defaults (FAST false, the notebook's ITERS): must run end to end (<= 5 min on 2 idle cores)."""
    nb = run_notebook(NAME, tmp_path, DATA_ROOT=str(tmp_path / "digits"), RUN_DIR=str(tmp_path / "runs"))
    text = "\n".join(_outputs(nb))
    for check in CHECKS:
        assert check in text, check
    assert "exercise 1 passed" in text and "exercise 2 passed" in text
    assert "smoke-test settings" not in text
