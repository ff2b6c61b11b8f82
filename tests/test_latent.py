"""Latent-space snapshots and measures (issue 7): determinism, transform placement, sklearn agreement."""
import json
from pathlib import Path

import numpy as np
import pytest

from s4kit.config import load_config
from s4kit.engine import train
from s4kit.engine.latent import viz_runs
from s4kit.engine.snapshots import load_snapshots, snapshot_iterations
from s4kit.viz.latent import knn_accuracy, prototype_distance, silhouette

from conftest import tiny_overrides


def test_snapshot_schedule_spans_first_to_last_iteration():
    assert snapshot_iterations(800, 5) == [1, 201, 400, 600, 800]
    assert snapshot_iterations(3, 5) == [1, 2, 3]
    assert snapshot_iterations(10, 1) == [10] and snapshot_iterations(10, 0) == []


def test_silhouette_and_knn_match_scikit_learn_on_a_hand_made_example():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    a = rng.normal([1, 0, 0], 0.05, (20, 3))
    b = rng.normal([0, 1, 0], 0.05, (20, 3))
    reps, labels = np.vstack([a, b]), np.repeat([0, 1], 20)
    assert silhouette(reps, labels) == pytest.approx(silhouette_score(reps, labels, metric="cosine"))
    assert silhouette(reps, labels) > 0.9  # two tight, orthogonal clusters
    assert knn_accuracy(reps, labels, k=3) == pytest.approx(100.0)
    shuffled = rng.permutation(labels)
    assert knn_accuracy(reps, shuffled, k=3) < 80


def test_prototype_distance_hand_example():
    reps = np.array([[1.0, 0], [0, 2.0], [1, 1]])
    labels = np.array([0, 1, 1])
    protos = np.array([[2.0, 0], [0, 1.0]])
    # cos: 1, 1, 1/sqrt(2) -> distances 0, 0, 1 - 1/sqrt(2)
    assert prototype_distance(reps, labels, protos) == pytest.approx((1 - 1 / np.sqrt(2)) / 3)
    protos[1] = np.nan  # a class without prototype is skipped
    assert prototype_distance(reps, labels, protos) == pytest.approx(0.0)


def test_snapshots_are_deterministic_small_and_prototypes_land_where_transform_puts_them(digits_root, tmp_path, capsys):
    over = tiny_overrides(digits_root, tmp_path / "a", iters=4) + ["viz.snapshots=3", "viz.snapshot_pixels=300",
                                                                  "viz.snapshot_images=16"]
    train(load_config("digits/reco", over), progress=False)
    train(load_config("digits/reco", [o.replace(str(tmp_path / "a"), str(tmp_path / "b")) for o in over]),
          progress=False)
    pa, sa = load_snapshots(tmp_path / "a")
    pb, sb = load_snapshots(tmp_path / "b")
    assert [it for it, _ in sa] == [1, 2, 4]  # from the first to the last iteration
    for key in pa:
        assert np.array_equal(pa[key], pb[key])  # the same seeded pixel sample
    assert np.array_equal(sa[-1][1]["rep"], sb[-1][1]["rep"])
    size = sum(p.stat().st_size for p in (tmp_path / "a" / "snapshots").iterdir())
    assert size < 5e6
    assert sa[-1][1]["rep"].dtype == np.float16 and len(pa["label"]) == len(sa[-1][1]["rep"])

    from s4kit.viz.latent import embed_snapshots

    embedded = embed_snapshots(sa, seed=0, n_iter=100)
    it, pts, protos = embedded[-1]
    # a prototype equal to one of the last snapshot's pixels lands on (near) that pixel
    probe = dict(sa[-1][1])
    k = int(pa["label"][0])
    probe["prototypes"] = probe["prototypes"].copy()
    probe["prototypes"][k] = probe["rep"][0]
    _, _, placed = embed_snapshots(sa[:-1] + [(it, probe)], seed=0, n_iter=100)[-1]
    spread = np.linalg.norm(pts.max(0) - pts.min(0))
    assert np.linalg.norm(placed[k] - pts[0]) < 0.1 * spread

    results = viz_runs([tmp_path / "a", tmp_path / "b"], out=tmp_path / "side.png")
    assert (tmp_path / "side.png").stat().st_size > 5000
    assert (tmp_path / "a" / "figures" / "tsne_evolution.png").exists()
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["silhouette"] == pytest.approx(results[str(tmp_path / "a")]["silhouette"])
    assert {"knn_accuracy", "proto_distance"} <= set(m)

    from s4kit.cli import main

    (tmp_path / "side.png").unlink()
    assert main(["viz", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "side.png")]) == 0
    wrote = [line[len("wrote "):] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert wrote == [str(tmp_path / r / "figures" / "tsne_evolution.png") for r in ("a", "b")] + \
        [str(tmp_path / "side.png")]
    assert all(Path(w).is_file() for w in wrote)


def test_snapshots_of_val_images_of_different_sizes(digits_root, tmp_path):
    """VOC val images differ in size: every snapshot pixel holds the representation of its
    own image at its own (row, column) on the head grid."""
    import torch

    from s4kit.data.loaders import build_dataset
    from s4kit.engine.snapshots import choose_pixels, take_snapshot
    from s4kit.methods import build_method

    cfg = load_config("digits/supervised", tiny_overrides(digits_root, tmp_path) + ["viz.snapshot_images=6",
                                                                                    "viz.snapshot_pixels=120"])
    torch.manual_seed(0)
    method = build_method(cfg)
    val = build_dataset(cfg, "val", train=False)

    class Ragged(torch.utils.data.Dataset):  # image i loses 8 * (i % 3) rows
        def __len__(self):
            return len(val)

        def __getitem__(self, i):
            s = dict(val[i])
            keep = 32 - 8 * (i % 3)
            s["image"], s["mask"] = s["image"][:, :keep], s["mask"][:keep]
            return s

    data = Ragged()
    pixels = choose_pixels(cfg, method, torch.device("cpu"), data)
    assert len(set(pixels["image"].tolist())) > 1
    snap = dict(np.load(take_snapshot(cfg, method, torch.device("cpu"), data, pixels, tmp_path / "s.npz")))
    for p in range(0, len(pixels["label"]), 17):
        out = method.forward_eval(data[int(pixels["image"][p])]["image"][None])
        expected = out["feat"][0, :, int(pixels["row"][p]), int(pixels["col"][p])]
        np.testing.assert_allclose(snap["rep"][p], expected.numpy().astype(np.float16), rtol=1e-3, atol=1e-3)
