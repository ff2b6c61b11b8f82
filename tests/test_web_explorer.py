"""The static (kernel-free) latent-space explorer of the book: its data carries every run's
snapshots by iteration, sigma^2 only where a run stores it, the dataset's class names and colours."""
import json
import re

import numpy as np

from s4kit.viz.figures import ERROR_COLOUR, class_colours
from s4kit.viz.web_explorer import explorer_data, explorer_html, write_explorer

from test_explorer import fake_run


def _runs():
    return {"reco (1_16)": fake_run("reco", sigma=False),
            "prcl (1_16)": fake_run("prcl", sigma=True, iters=(1, 400, 800, 1200), seed=1)}


def test_explorer_data_keeps_each_runs_snapshots_points_and_sigma():
    runs = _runs()
    data = explorer_data(runs)["runs"]
    assert list(data) == ["reco (1_16)", "prcl (1_16)"]
    prcl, reco = data["prcl (1_16)"], data["reco (1_16)"]
    assert [s["iteration"] for s in prcl["snapshots"]] == [1, 400, 800, 1200]
    assert all(s["sigma"] is None for s in reco["snapshots"]) and all(s["sigma"] for s in prcl["snapshots"])
    it, pts, protos = runs["prcl (1_16)"]["embedded"][2]
    s = prcl["snapshots"][2]
    np.testing.assert_allclose(np.c_[s["x"], s["y"]], pts, atol=5e-4)
    np.testing.assert_allclose(s["sigma"], runs["prcl (1_16)"]["snaps"][2][1]["extra_sigma2"].astype(float), atol=1e-4)
    assert s["pred"] == runs["prcl (1_16)"]["snaps"][2][1]["pred"].tolist()
    assert prcl["label"] == runs["prcl (1_16)"]["pixels"]["label"].tolist()
    # classes absent from the sample have no prototype; present ones are where t-SNE placed them
    assert s["protos"][1] == [None, None] and np.allclose(s["protos"][5], protos[5], atol=5e-4)
    assert prcl["names"][:3] == ["background", "0", "1"]
    hexes = ["#%02x%02x%02x" % tuple(int(round(255 * c)) for c in rgb) for rgb in class_colours("digits", 11)]
    assert prcl["colours"] == hexes and prcl["error"] not in hexes
    assert prcl["error"] == "#%02x%02x%02x" % tuple(int(round(255 * c)) for c in ERROR_COLOUR)


def test_the_page_embeds_plotly_and_its_data(tmp_path):
    html = explorer_html(_runs(), element_id="x1")
    assert "Plotly" in html[:5_000_000] and 'id="x1"' in html
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", html).group(1))
    assert set(data["runs"]) == {"reco (1_16)", "prcl (1_16)"}
    page = write_explorer(_runs(), tmp_path / "explorer.html")
    assert page.read_text().startswith("<!doctype html>")
