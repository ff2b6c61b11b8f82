"""COCO (81 classes, the UniMatch/AllSpark protocol) on a tiny COCO-layout fixture built here."""
import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from s4kit.config import ConfigError, load_config
from s4kit.data.coco import (COCO_THING_IDS, MissingDependencyError, build_coco_masks, category_to_class,
                             paint_semantic_mask)
from s4kit.data.datasets import DataError, SegmentationDataset, read_mask
from s4kit.data.loaders import build_dataset, n_images
from s4kit.data.splits import SplitError, read_split_file
from s4kit.labels import CLASS_NAMES

# A few (category id -> name) pairs as instances_train2017.json lists them: an oracle for the
# id -> class index -> name chain that does not go through s4kit's tables.
OFFICIAL = {1: "person", 13: "stop sign", 27: "backpack", 44: "bottle", 62: "chair", 67: "dining table",
            72: "tv", 90: "toothbrush"}


def _coco_fixture(root):
    """train2017/ + val2017/ JPEGs, masks/ grayscale PNGs of class indices and UniMatch split lists."""
    rng = np.random.default_rng(0)
    masks = {}
    specs = [("train2017", 9, (18, 24)), ("train2017", 25, (20, 16)), ("train2017", 30, (12, 12)),
             ("train2017", 34, (16, 20)), ("val2017", 139, (14, 22))]
    for folder, image_id, (h, w) in specs:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        name = f"{image_id:012d}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / folder / f"{name}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[2:6, 3:9] = 1       # person
        mask[7:10, 1:5] = 12     # stop sign (category id 13)
        mask[h - 3:, w - 4:] = 80  # toothbrush (category id 90)
        mask[0, :] = 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{name}.png")
        masks[image_id] = mask
    lines = {i: f"{'val2017' if i == 139 else 'train2017'}/{i:012d}.jpg masks/{i:012d}.png" for i in masks}
    (root / "splits" / "1_512").mkdir(parents=True)
    # UniMatch's files: one "image mask" line each, the last one without a trailing newline
    (root / "splits" / "1_512" / "labeled.txt").write_text(lines[9] + "\n" + lines[25])
    (root / "splits" / "1_512" / "unlabeled.txt").write_text(lines[30] + "\n" + lines[34] + "\n")
    (root / "splits" / "val.txt").write_text(lines[139])
    return masks


def test_coco_presets_resolve_with_the_papers_protocol():
    cfg = load_config("coco/css", ["model.pretrained=none"])
    assert (cfg.data.dataset, cfg.data.num_classes, cfg.data.label_format, cfg.data.split) == ("coco", 81, "coco", "1_512")
    assert cfg.data.crop_size == 513 and list(cfg.data.scale_range) == [0.5, 2.0]
    # UniMatch: 30 epochs of len(unlabeled loader) on 4 GPUs x batch 2 (DistributedSampler, drop_last)
    unlabeled_1_512 = 118287 - 232
    assert cfg.train.iters == 30 * (math.ceil(unlabeled_1_512 / 4) // 2)
    assert (cfg.optim.lr, cfg.optim.head_lr_mult, cfg.optim.weight_decay) == (4e-3, 10.0, 1e-4)
    assert (cfg.train.batch_labeled, cfg.eval.mode, cfg.eval.batch_size) == (2, "full", 1)
    allspark = load_config("coco/allspark", ["model.pretrained=none"])
    assert allspark.train.iters == 10 * (math.ceil(unlabeled_1_512 / 4) // 4)  # AllSpark: 4 + 4 per GPU
    assert (allspark.model.encoder, allspark.optim.lr, allspark.train.batch_labeled) == ("mit_b5", 1e-3, 4)
    for name in ("meanteacher", "prcl", "supervised"):
        assert load_config(f"coco/{name}", ["model.pretrained=none"]).method.name == name
    with pytest.raises(ConfigError, match=r"data.num_classes=21: expected 81 with data.label_format=coco"):
        load_config("coco/css", ["model.pretrained=none", "data.num_classes=21"])


def test_category_ids_map_to_classes_1_to_80_in_id_order():
    # hand-counted: ids 1..11 are classes 1..11; id 12 is unused, so stop sign (13) is 12;
    # dining table (67) is 61 (11 + 13 + 2 + 14 + 20 + 1); the last id, 90, is 80
    assert [category_to_class(i) for i in (1, 11, 13, 67, 90)] == [1, 11, 12, 61, 80]
    for cid, name in OFFICIAL.items():
        assert CLASS_NAMES["coco"][category_to_class(cid)] == name
    assert CLASS_NAMES["coco"][0] == "background" and len(CLASS_NAMES["coco"]) == 81
    assert sorted({category_to_class(i) for i in COCO_THING_IDS}) == list(range(1, 81))
    for bad in (0, 12, 83, 91, 300):
        with pytest.raises(DataError, match=rf"instances.json: unknown COCO category id {bad} "):
            category_to_class(bad, "instances.json")


def test_instances_paint_one_label_map_with_clashes_ignored():
    def box(r0, r1, c0, c1):
        m = np.zeros((5, 7), bool)
        m[r0:r1, c0:c1] = True
        return m

    instances = [(1, box(1, 3, 1, 4)),   # person
                 (13, box(2, 4, 3, 6)),  # stop sign, overlaps the person at (2, 3)
                 (1, box(0, 2, 0, 2))]   # a second person, overlapping the first: still person
    expected = np.array([[1, 1, 0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0, 0],
                         [0, 1, 1, 255, 12, 12, 0],
                         [0, 0, 0, 12, 12, 12, 0],
                         [0, 0, 0, 0, 0, 0, 0]], np.uint8)
    assert np.array_equal(paint_semantic_mask(5, 7, instances), expected)
    assert np.array_equal(paint_semantic_mask(5, 7, instances[::-1]), expected)  # order does not matter
    with pytest.raises(DataError, match="category 1 has shape"):
        paint_semantic_mask(5, 8, instances)


def test_dataset_loads_the_fixture_through_the_preset(tmp_path):
    masks = _coco_fixture(tmp_path)
    cfg = load_config("coco/css", ["model.pretrained=none", f"data.root={tmp_path}", "data.num_workers=0"])
    assert n_images(cfg, "labeled") == 2 and n_images(cfg, "unlabeled") == 2 and n_images(cfg, "val") == 1
    labeled = build_dataset(cfg, "labeled", train=False)
    assert labeled.ids() == ["000000000009", "000000000025"]
    s = labeled[1]
    assert s["image"].shape == (3, 20, 16) and torch.equal(s["mask"], torch.from_numpy(masks[25].astype(np.int64)))
    names = CLASS_NAMES["coco"]
    assert {names[k] for k in s["mask"].unique().tolist() if k != 255} == {"background", "person", "stop sign",
                                                                           "toothbrush"}
    unl = build_dataset(cfg, "unlabeled", train=True)[(0, 123)]
    assert "mask" not in unl and unl["image"].shape == (3, 513, 513)  # the preset's crop, padded
    assert unl["valid"].sum() < 513 * 513
    val = build_dataset(cfg, "val", train=False)[0]
    assert torch.equal(val["mask"], torch.from_numpy(masks[139].astype(np.int64)))


def test_split_lists_in_unimatch_format_parse(tmp_path):
    _coco_fixture(tmp_path)
    entries = read_split_file(tmp_path / "splits" / "1_512" / "labeled.txt")
    assert entries == [("train2017/000000000009.jpg", "masks/000000000009.png"),
                       ("train2017/000000000025.jpg", "masks/000000000025.png")]
    (tmp_path / "missing.txt").write_text("train2017/000000000009.jpg masks/000000000777.png\n")
    with pytest.raises(SplitError, match=r"missing.txt: names 'masks/000000000777.png', which does not exist"):
        SegmentationDataset(tmp_path, tmp_path / "missing.txt", 81, label_format="coco")


@pytest.mark.parametrize("value, hint", [(81, ""), (90, "not the COCO category id")])
def test_a_mask_value_above_80_is_refused_naming_the_file(tmp_path, value, hint):
    _coco_fixture(tmp_path)
    bad = tmp_path / "masks" / "000000000025.png"
    mask = np.asarray(Image.open(bad)).copy()
    assert read_mask(bad, 81, "coco").max() == 255  # 255 (ignore) and 0..80 pass
    mask[5, 5] = value
    Image.fromarray(mask, mode="L").save(bad)
    ds = SegmentationDataset(tmp_path, tmp_path / "splits" / "1_512" / "labeled.txt", 81, label_format="coco")
    ds[0]  # the other image is fine
    with pytest.raises(DataError, match=rf"000000000025.png: unknown label id {value} \(expected 0..80 or 255.*{hint}"):
        ds[1]


def _instances(path):
    """A tiny instances file: polygons, a crowd RLE, an image without annotations."""
    h, w = 10, 12
    crowd = [9 * h, h, (w - 10) * h]  # uncompressed, column-major RLE: column 9 only
    data = {
        "images": [{"id": 42, "file_name": "000000000042.jpg", "height": h, "width": w},
                   {"id": 7, "file_name": "000000000007.jpg", "height": h, "width": w}],
        "categories": [{"id": cid, "name": name} for cid, name in OFFICIAL.items()],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 12.0, "bbox": [1, 1, 4, 3],
             "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},              # person: x 1..5, y 1..4
            {"id": 2, "image_id": 42, "category_id": 90, "iscrowd": 0, "area": 12.0, "bbox": [4, 5, 4, 4],
             "segmentation": [[4, 5, 8, 5, 8, 9, 4, 9]]},              # toothbrush: x 4..8, y 5..9
            {"id": 3, "image_id": 42, "category_id": 62, "iscrowd": 1, "area": 10.0, "bbox": [9, 0, 1, 10],
             "segmentation": {"size": [h, w], "counts": crowd}},       # chairs (crowd): column 9
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_instances_json_converts_to_masks_with_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from s4kit.cli import main

    (tmp_path / "annotations").mkdir()
    ann = _instances(tmp_path / "annotations" / "instances_val2017.json")
    assert main(["data", "coco", "--root", str(tmp_path), "--annotations", str(ann)]) == 0
    out = tmp_path / "masks" / "000000000042.png"
    assert Image.open(out).mode == "L"
    m = read_mask(out, 81, "coco")
    assert m.shape == (10, 12)
    assert (m[2:4, 2:5] == 1).all()        # inside the person polygon
    assert (m[6:9, 5:8] == 80).all()       # inside the toothbrush polygon
    assert (m[:, 9] == 57).all() and CLASS_NAMES["coco"][57] == "chair"  # the crowd RLE, its class
    assert (m[:, 11] == 0).all() and m[8, 1] == 0  # background
    assert (read_mask(tmp_path / "masks" / "000000000007.png", 81, "coco") == 0).all()  # no annotations
    with pytest.raises(DataError, match=r"instances_nope.json: COCO annotation file not found"):
        build_coco_masks(tmp_path / "instances_nope.json", tmp_path / "masks2")
    # an unknown category id stops the build, naming the file and the id
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 12
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2017.json: unknown COCO category id 12"):
        build_coco_masks(ann, tmp_path / "masks2")


def test_building_masks_without_pycocotools_names_the_package(tmp_path, monkeypatch, capsys):
    from s4kit.cli import main

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(MissingDependencyError, match=r"'pycocotools' \(pip install pycocotools\)"):
        build_coco_masks(tmp_path / "instances_train2017.json", tmp_path / "masks")
    assert main(["data", "coco", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pycocotools" in err[0]
