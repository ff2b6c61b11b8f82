"""Notebook 06 (latent space) under papermill, and the explorer's plain callbacks."""
import json

import numpy as np
import pytest

from s4kit.config import load_config
from s4kit.engine import train
from s4kit.viz.explorer import COLOURINGS, load_explorer_runs, render_view, view_data

from conftest import run_notebook, tiny_overrides


@pytest.fixture(scope="module")
def two_runs(digits_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    dirs = []
    for method in ("supervised", "reco"):
        rd = root / method
        train(load_config(f"digits/{method}", tiny_overrides(digits_root, rd, iters=3)), progress=False)
        dirs.append(rd)
    return dirs


def test_explorer_callbacks(two_runs):
    runs = load_explorer_runs(two_runs, tsne_iters=50)
    assert set(runs) == {"supervised (1_16)", "reco (1_16)"}
    run = runs["reco (1_16)"]
    labels = run["pixels"]["label"]
    keep = sorted(set(labels.tolist()))[:2]
    v = view_data(run, keep, 0, "true class")
    assert len(v["points"]) == np.isin(labels, keep).sum()
    assert np.isnan(v["prototypes"][[k for k in range(11) if k not in keep]]).all()
    err = view_data(run, None, -1, "error")
    wrong = run["snaps"][-1][1]["pred"] != labels
    assert np.allclose(err["colours"][wrong], [0.85, 0.1, 0.1])
    with pytest.raises(ValueError, match="sigma2"):
        view_data(run, None, -1, "sigma2")  # reco stores no sigma^2
    assert render_view(runs, "reco (1_16)", None, -1, COLOURINGS[1]) is not None
    with pytest.raises(KeyError):
        render_view(runs, "nosuch", None)


def test_notebook_06_headless(two_runs, tmp_path, digits_root):
    nb = run_notebook("06_latent_space.ipynb", tmp_path, FAST=True, DATA_ROOT=str(digits_root),
                      RUNS=" ".join(map(str, two_runs)), RUN_DIR=str(tmp_path / "nb06"), DEVICE="cpu")
    text = json.dumps(nb)
    assert "notebook embedding == s4kit.viz.latent.embed_snapshots" in text
    assert (tmp_path / "nb06" / "latent_space.png").exists()
    # the kernel-free explorer (what the static book shows) is in the outputs with both runs' data
    html = [o["data"]["text/html"] for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {}) and "s4kit-explorer" in "".join(o["data"]["text/html"])]
    assert len(html) == 1 and "supervised (1_16)" in "".join(html[0]) and "reco (1_16)" in "".join(html[0])


@pytest.mark.teaching
def test_notebook_06_at_its_defaults(tmp_path):
    """FAST off, the defaults: trains its three runs (ITERS each) and draws both explorers."""
    nb = run_notebook("06_latent_space.ipynb", tmp_path, DATA_ROOT=str(tmp_path / "digits"),
                      RUN_DIR=str(tmp_path / "nb06"))
    text = json.dumps(nb)
    assert "notebook embedding == s4kit.viz.latent.embed_snapshots" in text and "smoke-test settings" not in text
    assert "prcl (1_16)" in text and "s4kit-explorer" in text
