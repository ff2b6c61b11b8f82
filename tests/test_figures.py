"""Figures of short runs: one logged point is drawn as a marker, an empty axes says so."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from s4kit.viz.figures import curves, finish_legend, plot_series  # noqa: E402


def test_one_or_two_points_get_markers_and_a_longer_series_a_plain_line():
    fig, ax = plt.subplots()
    one = plot_series(ax, [(10, 0.5)], label="a")
    two = plot_series(ax, [(10, 0.5), (20, 0.4)], label="b")
    many = plot_series(ax, [(10, 0.5), (20, 0.4), (30, 0.3)], label="c")
    assert plot_series(ax, [], label="d") is None
    assert one.get_marker() == "o" and two.get_marker() == "o" and many.get_marker() in ("None", None, "")
    assert list(many.get_xdata()) == [10, 20, 30] and list(many.get_ydata()) == [0.5, 0.4, 0.3]
    plt.close(fig)


def test_an_axes_with_nothing_logged_says_so_instead_of_an_empty_legend():
    fig, (empty, drawn) = plt.subplots(1, 2)
    plot_series(drawn, [(1, 2.0)], label="loss")
    finish_legend(empty)
    finish_legend(drawn)
    assert empty.get_legend() is None and [t.get_text() for t in empty.texts] == ["nothing logged yet"]
    assert [t.get_text() for t in drawn.get_legend().get_texts()] == ["loss"] and not drawn.texts
    plt.close(fig)


def test_curves_skips_missing_values_and_writes_the_file(tmp_path):
    rows = [{"iter": 5, "loss": 1.0, "pl": float("nan")}, {"iter": 10, "loss": 0.8}]
    path = curves(tmp_path / "f" / "loss.png", rows, ["loss", "pl"], ylabel="loss")
    assert path.exists() and path.stat().st_size > 1000


# --- issue 15 item 7: figures a reader can decode ---------------------------------------------

import numpy as np  # noqa: E402

from s4kit.data.palette import colorize  # noqa: E402
from s4kit.labels import CLASS_NAMES  # noqa: E402
from s4kit.viz.figures import ERROR_COLOUR, class_colours, overlays, scatter_with_prototypes  # noqa: E402

MIN_DELTA_E = 30.0  # CIE76 distance between any two digits colours (incl. the error mark); ~2.3 is barely visible
MAX_BACKGROUND_CHROMA = 5.0  # background: a neutral (CIELAB chroma C*ab)
MIN_DIGIT_CHROMA = 30.0  # every digit a clear hue, no grey


def srgb_to_lab(rgb) -> np.ndarray:
    """float (..., 3) sRGB in [0, 1] -> CIELAB (D65 white), written out here so the test does
    not trust the code it checks."""
    c = np.asarray(rgb, np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6 / 29
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def test_lab_conversion_reference_values():
    lab = srgb_to_lab([[1, 1, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)  # sRGB red, D65


def test_digits_colours_and_the_error_mark_are_pairwise_distinct_and_background_is_neutral():
    pal = class_colours("digits", 11)
    assert pal.shape == (11, 3)
    lab = srgb_to_lab(np.vstack([pal, [ERROR_COLOUR]]))
    dist = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    who = ["background"] + [f"digit {d}" for d in range(10)] + ["error mark"]
    i, j = np.unravel_index(dist.argmin(), dist.shape)
    assert dist.min() >= MIN_DELTA_E, f"{who[i]} and {who[j]}: Delta E {dist.min():.1f}"
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    assert chroma[0] <= MAX_BACKGROUND_CHROMA
    assert (chroma[1:11] >= MIN_DIGIT_CHROMA).all(), chroma[1:11]
    # label maps (colorize) use the same colours as the scatters
    np.testing.assert_allclose(colorize(np.arange(11), "digits", 11) / 255.0, pal)


def test_the_error_mark_is_an_unfilled_ring_in_every_palette():
    """VOC and Cityscapes keep their official palettes, which have reds: a wrong prediction is
    told apart by shape (an unfilled ring), never a filled dot."""
    for dataset in ("pascal", "cityscapes", "digits"):
        names = list(CLASS_NAMES[dataset])
        fig, ax = plt.subplots()
        labels = np.arange(len(names))
        scatter_with_prototypes(ax, np.random.default_rng(0).normal(size=(len(names), 2)), labels, names, dataset,
                                wrong=labels % 2 == 0)
        rings = [c for c in ax.collections if c.get_label() == "wrongly predicted"]
        assert len(rings) == 1 and rings[0].get_facecolor().size == 0
        np.testing.assert_allclose(rings[0].get_edgecolor()[0, :3], ERROR_COLOUR)
        plt.close(fig)


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def _class_legends(fig) -> list:
    """Every legend titled as a class legend, of the figure and of its axes."""
    legends = list(fig.legends)
    for ax in fig.axes:
        legends += [a for a in ax.get_children() if type(a).__name__ == "Legend"]
    return [lg for lg in legends if lg.get_title().get_text() in ("true class", "class")]


def _capture(monkeypatch):
    """Keep the figure that ``save_figure`` is given (it closes it) for inspection."""
    import s4kit.viz.figures as F

    seen = []
    real = F.save_figure

    def keep(fig, path, dpi=110):
        seen.append(fig)
        return real(fig, path, dpi)

    monkeypatch.setattr(F, "save_figure", keep)
    return seen


def test_tsne_figures_have_a_legend_of_the_classes_shown(tmp_path, monkeypatch):
    import s4kit.viz.figures as F
    from s4kit.viz.latent import comparison_figure, evolution_figure

    seen = _capture(monkeypatch)
    rng = np.random.default_rng(0)
    names = list(CLASS_NAMES["digits"])
    labels = np.repeat([0, 3, 7, 10], 10)  # background, digits 2, 6 and 9
    pts = rng.normal(size=(len(labels), 2))
    protos = np.full((11, 2), np.nan)
    protos[[0, 3]] = 0.0
    wrong = np.arange(len(labels)) % 3 == 0
    shown = ["background", "2", "6", "9"]

    F.tsne_scatter(tmp_path / "t.png", pts, labels, names, "digits", protos, wrong)
    snaps = [(it, {"pred": np.where(wrong, 1, labels)}) for it in (1, 400)]
    evolution_figure(tmp_path / "e.png", [(it, pts, protos) for it, _ in snaps], labels, snaps, names, "digits")
    comparison_figure(tmp_path / "c.png", [{"title": "a", "points": pts, "prototypes": protos, "labels": labels,
                                            "pred": snaps[-1][1]["pred"]}], names, "digits")
    assert len(seen) == 3
    for fig in seen:
        legends = _class_legends(fig)
        assert len(legends) == 1 and _legend_texts(legends[0]) == shown
        colours = [h.get_color() for h in legends[0].legend_handles]
        np.testing.assert_allclose(np.array(colours, float), class_colours("digits", 11)[[0, 3, 7, 10]])
        keys = [t for lg in list(fig.legends) + [a.get_legend() for a in fig.axes] if lg is not None
                for t in _legend_texts(lg)]
        assert "wrongly predicted" in keys and "class prototype" in keys
    assert (tmp_path / "t.png").stat().st_size > 5000


def test_label_map_figure_has_a_legend_of_the_classes_in_truth_and_prediction(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    names = list(CLASS_NAMES["pascal"])
    gt = np.zeros((8, 8), np.int64)
    gt[2:5, 2:5] = 15
    gt[0] = 255
    pred = gt.copy()
    pred[0] = 0
    pred[6, 6] = 9
    overlays(tmp_path / "o.png", [np.zeros((8, 8, 3), np.uint8)], [gt], [pred], "pascal", 21, "t", names)
    (legend,) = _class_legends(seen[0])
    assert _legend_texts(legend) == ["background", "chair", "person", "ignored (255)"]
    assert (tmp_path / "o.png").exists()
