"""figures/results.png: every seed drawn, mean bars with ±1 std error bars, readable labels."""
import numpy as np

import s4kit.demo as demo


def test_results_figure_draws_every_seed_and_error_bars(tmp_path, monkeypatch):
    seen = {}

    def capture(fig, path, **kw):
        ax = fig.axes[0]
        seen["bars"] = [p.get_height() for p in ax.patches]
        seen["dots"] = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if type(c).__name__ == "PathCollection"])
        seen["errbars"] = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
        seen["rotation"] = {t.get_rotation() for t in ax.get_xticklabels()}
        seen["labels"] = [t.get_text() for t in ax.get_xticklabels()]
        fig.savefig(path)

    monkeypatch.setattr(demo, "atomic_savefig", capture)
    rows = [{"method": "supervised", "split": "1_16", "mious": [30.0, 33.0, 34.5]},
            {"method": "reco", "split": "1_16", "mious": [31.0, 35.0, 30.0]},
            {"method": "supervised", "split": "full", "mious": [60.2]}]
    out = demo.results_figure(rows, tmp_path / "results.png")
    assert out.exists()
    np.testing.assert_allclose(seen["bars"], [np.mean(r["mious"]) for r in rows])
    np.testing.assert_allclose(sorted(seen["dots"]), sorted(v for r in rows for v in r["mious"]))
    assert len(seen["errbars"]) == 1
    seg = seen["errbars"][0].lines[2][0].get_segments()
    lengths = sorted(round(float(s[1][1] - s[0][1]) / 2, 6) for s in seg if len(s) == 2 and np.isfinite(s).all())
    np.testing.assert_allclose(lengths, sorted(np.std(r["mious"], ddof=1) for r in rows[:2]), rtol=1e-6)
    assert seen["rotation"] == {35.0} and seen["labels"][0] == "supervised · 1_16"
