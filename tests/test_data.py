"""Datasets, split files and label formats on tiny fixtures in the real on-disk formats."""
import numpy as np
import pytest
import torch
from PIL import Image

from s4kit.data.datasets import CITYSCAPES_LABEL_TO_TRAIN, DataError, SegmentationDataset, read_mask
from s4kit.data.palette import voc_palette
from s4kit.data.splits import SplitError, generate_splits, read_split_file


def _voc_fixture(root, n=3, size=(20, 16)):
    """JPEGImages + SegmentationClass (palette) + SegmentationClassAug (grayscale), like VOC."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "SegmentationClassAug").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        name = f"2007_{i:06d}"
        Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = rng.integers(0, 21, size[::-1]).astype(np.uint8)
        mask[0] = 255
        p = Image.fromarray(mask, mode="P")
        p.putpalette(voc_palette())
        p.save(root / "SegmentationClass" / f"{name}.png")
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
        lines.append((name, mask))
    return lines


def test_voc_palette_and_grayscale_pngs_decode_to_class_ids(tmp_path):
    lines = _voc_fixture(tmp_path)
    for name, mask in lines:
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            got = read_mask(tmp_path / folder / f"{name}.png", 21)
            assert got.dtype == np.int64 and np.array_equal(got, mask)
    # a palette PNG really stores the VOC colours
    rgb = np.asarray(Image.open(tmp_path / "SegmentationClass" / f"{lines[0][0]}.png").convert("RGB"))
    assert tuple(rgb[0, 0]) == (224, 224, 192)  # void
    assert (Image.open(tmp_path / "SegmentationClass" / f"{lines[0][0]}.png").mode) == "P"


def test_dataset_reads_official_split_format(tmp_path):
    lines = _voc_fixture(tmp_path)
    split = tmp_path / "labeled.txt"
    # the last line without a trailing newline, as in some official files
    split.write_text("\n".join(f"JPEGImages/{n}.jpg SegmentationClassAug/{n}.png" for n, _ in lines))
    ds = SegmentationDataset(tmp_path, split, 21)
    assert len(ds) == 3 and ds.ids() == [n for n, _ in lines]
    s = ds[1]
    assert s["image"].shape == (3, 16, 20) and torch.equal(s["mask"], torch.from_numpy(lines[1][1].astype(np.int64)))
    unl = SegmentationDataset(tmp_path, split, 21, labeled=False)
    assert "mask" not in unl[0] and "hidden_mask" not in unl[0]
    hidden = SegmentationDataset(tmp_path, split, 21, labeled=False, hidden_gt=True)
    assert "hidden_mask" in hidden[0] and "mask" not in hidden[0]


def test_unknown_label_id_names_file_and_value(tmp_path):
    Image.fromarray(np.full((4, 4), 37, np.uint8), mode="L").save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad.png.*unknown label id 37"):
        read_mask(tmp_path / "bad.png", 21)


def test_rgb_label_image_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png.*mode 'RGB'"):
        read_mask(tmp_path / "rgb.png", 21)


def test_size_mismatch_and_unreadable_image(tmp_path):
    _voc_fixture(tmp_path, n=1)
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(tmp_path / "small.png")
    (tmp_path / "JPEGImages" / "broken.jpg").write_bytes(b"not a jpeg")
    split = tmp_path / "s.txt"
    split.write_text("JPEGImages/2007_000000.jpg small.png\n")
    with pytest.raises(DataError, match=r"small.png.*5x5.*2007_000000.jpg.*20x16"):
        SegmentationDataset(tmp_path, split, 21)[0]
    split.write_text("JPEGImages/broken.jpg SegmentationClass/2007_000000.png\n")
    with pytest.raises(DataError, match="broken.jpg.*unreadable"):
        SegmentationDataset(tmp_path, split, 21)[0]


def test_split_file_errors(tmp_path):
    with pytest.raises(SplitError, match="nosuch.txt.*not found"):
        read_split_file(tmp_path / "nosuch.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SplitError, match="empty.txt.*empty"):
        read_split_file(tmp_path / "empty.txt")
    (tmp_path / "three.txt").write_text("a b c\n")
    with pytest.raises(SplitError, match=r"three.txt:1"):
        read_split_file(tmp_path / "three.txt")
    _voc_fixture(tmp_path / "voc", n=1)
    (tmp_path / "ghost.txt").write_text("JPEGImages/ghost.jpg SegmentationClass/ghost.png\n")
    with pytest.raises(SplitError, match=r"ghost.txt.*JPEGImages/ghost.jpg"):
        SegmentationDataset(tmp_path / "voc", tmp_path / "ghost.txt", 21)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    ids = np.array([[7, 8, 11, 12], [26, 33, 0, 1], [4, 24, 25, 31]], np.uint8)
    Image.fromarray(ids, mode="L").save(tmp_path / "x_gtFine_labelIds.png")
    got = read_mask(tmp_path / "x_gtFine_labelIds.png", 19, "cityscapes")
    assert got.tolist() == [[0, 1, 2, 3], [13, 18, 255, 255], [255, 11, 12, 16]]
    assert sorted(set(CITYSCAPES_LABEL_TO_TRAIN[:34].tolist()) - {255}) == list(range(19))
    Image.fromarray(np.full((2, 2), 40, np.uint8), mode="L").save(tmp_path / "y_gtFine_labelIds.png")
    with pytest.raises(DataError, match=r"y_gtFine_labelIds.png.*labelId 40"):
        read_mask(tmp_path / "y_gtFine_labelIds.png", 19, "cityscapes")
    Image.fromarray(np.array([[0, 18], [255, 5]], np.uint8), mode="L").save(tmp_path / "z_gtFine_labelTrainIds.png")
    assert read_mask(tmp_path / "z_gtFine_labelTrainIds.png", 19, "cityscapes").tolist() == [[0, 18], [255, 5]]


def test_generated_splits_are_nested_and_partition_the_pool(tmp_path):
    pool = tmp_path / "train_aug.txt"
    pool.write_text("".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png\n" for i in range(50)))
    generate_splits(pool, tmp_path / "splits", {"a": 5, "b": 10}, seed=3)
    lab_a = {e for e, _ in read_split_file(tmp_path / "splits/a/labeled.txt")}
    lab_b = {e for e, _ in read_split_file(tmp_path / "splits/b/labeled.txt")}
    unl_b = {e for e, _ in read_split_file(tmp_path / "splits/b/unlabeled.txt")}
    assert len(lab_a) == 5 and len(lab_b) == 10 and lab_a < lab_b
    assert not lab_b & unl_b and len(lab_b | unl_b) == 50
    with pytest.raises(SplitError, match="asks for 60"):
        generate_splits(pool, tmp_path / "s2", {"c": 60})


def test_resize_reads_every_image_and_mask_at_the_given_size(tmp_path):
    """``data.resize`` (ReCo's Cityscapes 1024x512 pre-resizing): labelIds 2x2 blocks halve to
    one pixel each (nearest keeps only ids the mask had), a horizontal ramp halves to about
    the mean of each 2x2 block (bicubic), and the whole-image val set comes out at the size."""
    from omegaconf import OmegaConf

    from s4kit.data.loaders import build_dataset

    h, w = 16, 32
    for sub in ("leftImg8bit", "gtFine"):
        (tmp_path / sub).mkdir()
    ids = np.array([7, 8, 11, 26, 33, 0])  # labelIds: road, sidewalk, building, car, bicycle, void
    rng = np.random.default_rng(0)
    small = ids[rng.integers(0, len(ids), (h // 2, w // 2))].astype(np.uint8)
    Image.fromarray(np.kron(small, np.ones((2, 2), np.uint8)), mode="L").save(tmp_path / "gtFine/a_gtFine_labelIds.png")
    ramp = np.tile(np.linspace(20, 220, w), (h, 1))
    image = np.repeat(ramp[..., None], 3, axis=2).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "leftImg8bit/a_leftImg8bit.png")
    line = "leftImg8bit/a_leftImg8bit.png gtFine/a_gtFine_labelIds.png"
    (tmp_path / "splits/s").mkdir(parents=True)
    for name in ("splits/s/labeled.txt", "splits/s/unlabeled.txt", "splits/val.txt"):
        (tmp_path / name).write_text(line + "\n")
    cfg = OmegaConf.create({"data": {"root": str(tmp_path), "splits": str(tmp_path / "splits"), "split": "s",
                                     "num_classes": 19, "label_format": "cityscapes", "crop_size": 8,
                                     "scale_range": [1.0, 1.0], "flip": False, "hidden_gt": False, "cache": False,
                                     "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "resize": [h // 2, w // 2]}})
    val = build_dataset(cfg, "val", train=False)
    s = val[0]
    assert s["image"].shape == (3, h // 2, w // 2) and s["mask"].shape == (h // 2, w // 2)
    assert np.array_equal(s["mask"].numpy(), CITYSCAPES_LABEL_TO_TRAIN[small])
    block_mean = ramp.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    assert np.abs(s["image"][0].numpy() * 255 - block_mean)[:, 1:-1].max() < 1.5  # borders: bicubic overshoot
    train = build_dataset(cfg, "labeled", train=True)
    t = train[(0, 3)]
    assert t["image"].shape == (3, 8, 8) and set(t["mask"].unique().tolist()) <= set(CITYSCAPES_LABEL_TO_TRAIN[ids].tolist())
    native = build_dataset(OmegaConf.merge(cfg, {"data": {"resize": None}}), "val", train=False)[0]
    assert native["image"].shape == (3, h, w)
