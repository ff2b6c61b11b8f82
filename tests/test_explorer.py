"""The latent-space explorer (issue 15 item 7): a slider labelled by training iteration, sigma^2
colouring only for runs that store it, a class legend. Fake runs: no training, no t-SNE."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from s4kit.labels import CLASS_NAMES  # noqa: E402
from s4kit.viz.explorer import build_explorer, colourings, render_view, snapshot_options, view_data  # noqa: E402
from s4kit.viz.figures import class_colours  # noqa: E402

ITERS = (1, 400, 800)


def fake_run(method: str, sigma: bool, iters=ITERS, seed: int = 0) -> dict:
    """A ``load_explorer_runs`` value: 44 pixels of classes 0, 2, 5, 9, snapshots at ``iters``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 2, 5, 9], 11).astype(np.int16)
    snaps, embedded = [], []
    for it in iters:
        pred = labels.copy()
        pred[::4] = 1
        snap = {"pred": pred, "rep": rng.normal(size=(len(labels), 4)).astype(np.float16)}
        if sigma:
            snap["extra_sigma2"] = rng.random(len(labels)).astype(np.float16)
        snaps.append((it, snap))
        protos = np.full((11, 2), np.nan)
        protos[[0, 2, 5, 9]] = rng.normal(size=(4, 2))
        embedded.append((it, rng.normal(size=(len(labels), 2)), protos))
    info = {"method": method, "dataset": "digits", "split": "1_16", "seed": 0, "names": list(CLASS_NAMES["digits"])}
    return {"info": info, "pixels": {"label": labels}, "snaps": snaps, "embedded": embedded}


@pytest.fixture
def runs():
    return {"reco (1_16)": fake_run("reco", sigma=False),
            "prcl (1_16)": fake_run("prcl", sigma=True, iters=(1, 400, 800, 1200))}


def test_sigma2_is_offered_only_for_a_run_that_stores_it(runs):
    assert "sigma2" not in colourings(runs["reco (1_16)"])
    assert "sigma2" in colourings(runs["prcl (1_16)"])
    w = build_explorer(runs)  # starts on reco
    assert "sigma2" not in w["colouring"].options
    w["method"].value = "prcl (1_16)"
    assert "sigma2" in w["colouring"].options
    w["colouring"].value = "sigma2"
    w["method"].value = "reco (1_16)"  # back to a run without sigma^2: the choice falls back
    assert "sigma2" not in w["colouring"].options and w["colouring"].value == "true class"


def test_the_slider_is_labelled_by_training_iteration_not_snapshot_index(runs):
    assert snapshot_options(runs["reco (1_16)"]) == [("iteration 1", 0), ("iteration 400", 1), ("iteration 800", 2)]
    w = build_explorer(runs)
    slider = w["snapshot"]
    assert [label for label, _ in slider.options] == ["iteration 1", "iteration 400", "iteration 800"]
    assert slider.label == "iteration 800" and slider.value == 2  # starts on the last snapshot
    slider.value = 1
    assert slider.label == "iteration 400"
    w["method"].value = "prcl (1_16)"  # its own iterations; the same iteration kept where it has one
    assert [label for label, _ in slider.options][-1] == "iteration 1200"
    assert slider.label == "iteration 400"


def _legend_texts(ax) -> dict[str, list[str]]:
    legends = [a for a in ax.get_children() if type(a).__name__ == "Legend"]
    return {lg.get_title().get_text(): [t.get_text() for t in lg.get_texts()] for lg in legends}


def test_views_carry_a_legend_of_what_their_colours_mean(runs):
    names = list(CLASS_NAMES["digits"])
    ax = render_view(runs, "reco (1_16)", None, -1, "true class")
    assert _legend_texts(ax)["true class"] == [names[k] for k in (0, 2, 5, 9)]
    handles = [a for a in ax.get_children() if type(a).__name__ == "Legend"][0].legend_handles
    np.testing.assert_allclose([h.get_color() for h in handles], class_colours("digits", 11)[[0, 2, 5, 9]])
    plt.close(ax.figure)
    ax = render_view(runs, "reco (1_16)", [2, 5], 0, "prediction")
    assert _legend_texts(ax)["predicted class"] == [names[k] for k in (1, 2, 5)]  # predicted among the shown pixels
    plt.close(ax.figure)
    ax = render_view(runs, "reco (1_16)", None, -1, "error")
    assert "wrongly predicted" in sum(_legend_texts(ax).values(), [])
    plt.close(ax.figure)
    ax = render_view(runs, "prcl (1_16)", None, -1, "sigma2")
    assert any("σ²" in a.get_ylabel() for a in ax.figure.axes if a is not ax)  # a colour bar
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="sigma2"):
        view_data(runs["reco (1_16)"], None, -1, "sigma2")
