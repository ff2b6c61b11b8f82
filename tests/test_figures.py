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
