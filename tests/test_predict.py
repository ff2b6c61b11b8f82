"""s4kit predict (your own images through a trained run) and the folder dataset (issue 15 item 6)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from s4kit.cli import main

from conftest import tiny_overrides

FAST = ["viz.enabled=false", "viz.snapshots=0", "eval.max_images=8", "eval.pl_max_images=8"]


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def mt_run(digits_root, tmp_path_factory):
    """A 2-iteration digits mean-teacher run (it evaluates with its EMA teacher)."""
    run = tmp_path_factory.mktemp("runs") / "mt"
    assert main(["train", "digits/meanteacher"] + tiny_overrides(digits_root, run, iters=2) + FAST) == 0
    return run


def _inputs(digits_root, folder):
    """3 images: a 32x32 val scene (the crop size), a 50x41 one (larger: sliding windows), a corrupt file."""
    folder.mkdir()
    src = Image.open(digits_root / "JPEGImages" / "val_00000.jpg").convert("RGB")
    src.save(folder / "small.png")
    src.resize((50, 41), Image.BICUBIC).save(folder / "big.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return folder


def _normalised(path, cfg):
    """The image as the eval transform should give it, computed by hand: (x / 255 - mean) / std."""
    x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(list(cfg.data.mean)).view(3, 1, 1), torch.tensor(list(cfg.data.std)).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _teacher_logits(method, x):
    """Logits of the EMA teacher in eval mode, upsampled as the ReCo family does (align_corners=True)."""
    assert method.teacher is not None
    method.teacher.eval()
    with torch.no_grad():
        logits = method.teacher(x)["logits"].float()
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)


def test_predict_writes_masks_overlays_uncertainty_and_names_the_bad_file(mt_run, digits_root, tmp_path, capsys):
    from s4kit.engine.predict import colour_lut
    from s4kit.engine.runs import load_run

    images = _inputs(digits_root, tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = _run(["predict", mt_run, images, "--out", out, "--device", "cpu"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "broken.png" in err and err.strip().splitlines()[-1] == (
        f"s4kit: error: 1 of 3 images could not be read: {images / 'broken.png'}")
    assert "segmented 2 of 3 images" in stdout
    assert not list(out.glob("broken*"))

    cfg, method = load_run(mt_run, device="cpu")
    k = cfg.data.num_classes
    magma = {tuple(c) for c in colour_lut("magma").tolist()}
    for stem, suffix, size in (("small", "png", (32, 32)), ("big", "jpg", (50, 41))):
        mask = Image.open(out / f"{stem}_mask.png")
        assert mask.mode == "P" and mask.size == size
        pred = torch.from_numpy(np.asarray(mask).astype(np.int64))
        assert 0 <= int(pred.min()) and int(pred.max()) < k
        x = _normalised(images / f"{stem}.{suffix}", cfg)
        if stem == "small":  # fits the 32-px crop: one forward pass of the teacher
            expected = _teacher_logits(method, x).argmax(1)[0]
        else:  # 50x41 > 32: 32-px windows every 21 px, the last one against the border; softmax summed
            summed = torch.zeros(1, k, 41, 50)
            for y in (0, 9):
                for x0 in (0, 18):
                    crop = x[..., y:y + 32, x0:x0 + 32]
                    summed[..., y:y + 32, x0:x0 + 32] += _teacher_logits(method, crop).softmax(1)
            expected = summed.argmax(1)[0]
        assert torch.equal(pred, expected), stem
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == size
        unc = Image.open(out / f"{stem}_uncertainty.png")
        assert unc.mode == "RGB" and unc.size == size
        assert {tuple(c) for c in np.asarray(unc).reshape(-1, 3).tolist()} <= magma  # values of the colour map
        assert not (out / f"{stem}_sigma2.png").exists()  # meanteacher has no sigma^2


def test_predict_image_probabilities_and_uncertainty_are_in_range(mt_run, digits_root):
    from s4kit.engine.predict import predict_image
    from s4kit.engine.runs import load_run

    cfg, method = load_run(mt_run, device="cpu")
    image = np.array(Image.open(digits_root / "JPEGImages" / "val_00001.jpg").convert("RGB").resize((45, 70)))
    r = predict_image(method, cfg, image, torch.device("cpu"))
    k = cfg.data.num_classes
    assert r["probs"].shape == (k, 70, 45) and torch.allclose(r["probs"].sum(0), torch.ones(70, 45), atol=1e-5)
    assert r["mask"].shape == (70, 45) and torch.equal(r["mask"], r["probs"].argmax(0))
    u = r["uncertainty"]
    assert u.shape == (70, 45) and float(u.min()) >= 0 and float(u.max()) <= 1
    entropy = -(r["probs"] * r["probs"].clamp_min(1e-12).log()).sum(0) / math.log(k)
    assert torch.allclose(u, entropy.clamp(0, 1), atol=1e-6) and float(u.max()) > 0


def test_predict_user_errors_are_one_line(mt_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(image)
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "empty_run").mkdir()
    for args, says in (
        ([tmp_path / "no_run", image, "--out", tmp_path / "o"], "not a run folder"),
        ([tmp_path / "empty_run", image, "--out", tmp_path / "o"], "no config.yaml"),
        ([mt_run, image, "--out", tmp_path / "file"], "is a file, not a folder"),
        ([mt_run, tmp_path / "nothing.png", "--out", tmp_path / "o"], "nothing.png: no such file or folder"),
    ):
        code, _, err = _run(["predict", *args, "--device", "cpu"], capsys)
        assert code == 2 and err.startswith("s4kit: error:") and says in err and len(err.strip().splitlines()) == 1, err
    ckpt = mt_run / "checkpoints" / "last.pt"
    ckpt.rename(ckpt.with_name("moved.pt"))
    try:
        code, _, err = _run(["predict", mt_run, image, "--out", tmp_path / "o"], capsys)
        assert code == 2 and "last.pt: no checkpoint" in err
    finally:
        ckpt.with_name("moved.pt").rename(ckpt)


def test_same_stems_get_distinct_names_and_best_is_last_without_best_pt(mt_run, tmp_path, capsys):
    from s4kit.engine.predict import collect_images

    for sub, colour in (("a", (250, 250, 250)), ("b", (0, 0, 0))):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (32, 32), colour).save(tmp_path / sub / "x.png")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "a" / "x.jpg")
    names = [name for _, name in collect_images([tmp_path / "a", tmp_path / "b", tmp_path / "a" / "x.png"])]
    assert names == ["a__x_jpg", "a__x_png", "b__x_png"]  # a/x.png given twice: taken once
    out = tmp_path / "out"
    code, _, err = _run(["predict", mt_run, tmp_path / "a", tmp_path / "b", "--out", out, "--checkpoint", "best",
                         "--device", "cpu"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["a__x_jpg_mask.png", "a__x_png_mask.png",
                                                              "b__x_png_mask.png"]
    metrics = json.loads((mt_run / "metrics.json").read_text())
    assert metrics["best_iter"] == metrics["iters"]  # why best means last.pt here


def test_prcl_writes_a_sigma2_map(digits_root, tmp_path, capsys):
    run = tmp_path / "prcl"
    assert main(["train", "digits/prcl"] + tiny_overrides(digits_root, run, iters=2) + FAST) == 0
    out = tmp_path / "out"
    code, _, err = _run(["predict", run, digits_root / "JPEGImages" / "val_00002.jpg", "--out", out,
                         "--device", "cpu"], capsys)
    assert code == 0, err
    sigma2 = Image.open(out / "val_00002_sigma2.png")
    assert sigma2.mode == "RGB" and sigma2.size == (32, 32)


# -- the folder dataset ----------------------------------------------------------------------------

def _folder_dataset(root, n_labeled=6, n_unlabeled=3, bad=None):
    """A tiny folder dataset: 3 classes, masked and unmasked 40x36 images (one nested)."""
    rng = np.random.default_rng(0)
    (root / "images" / "more").mkdir(parents=True)
    (root / "masks" / "more").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nsquare\nbar\n")
    for i in range(n_labeled + n_unlabeled):
        mask = np.zeros((36, 40), np.uint8)
        mask[5:20, 8:25] = 1
        mask[25:30, :] = 2
        mask[20, :] = 255
        image = (rng.uniform(0, 60, (36, 40, 3)) + 150 * (mask[..., None] == 1) + 90 * (mask[..., None] == 2))
        rel = f"more/img{i}" if i == 0 else f"img{i}"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{rel}.jpg")
        if i < n_labeled:
            if bad is not None and i == bad[0]:
                mask[0, 0] = bad[1]
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{rel}.png")
    return root


FOLDER_TINY = ["data.crop_size=32", "train.iters=2", "train.batch_labeled=2", "train.batch_unlabeled=2",
               "train.log_every=1", "train.checkpoint_every=2", "device=cpu", *FAST]


def test_folder_dataset_lists_trains_and_predicts(tmp_path, capsys):
    from s4kit.config import load_config
    from s4kit.data.folder import folder_entries

    root = _folder_dataset(tmp_path / "mine")
    labeled, unlabeled, val = (folder_entries(root, p, 3) for p in ("labeled", "unlabeled", "val"))
    assert len(unlabeled) == 3 and all(m is None for _, m in unlabeled)
    # every fifth masked image in name order: img1 img2 img3 img4 img5 more/img0
    assert [i for i, _ in val] == ["images/img5.jpg"]
    assert len(labeled) == 5 and ("images/more/img0.jpg", "masks/more/img0.png") in labeled
    assert load_config("folder/meanteacher", [f"data.root={root}"]).data.num_classes == 3

    run = tmp_path / "run"
    code, out, err = _run(["train", "folder/meanteacher", f"data.root={root}", f"run.dir={run}", *FOLDER_TINY], capsys)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_labeled"] == 5 and list(metrics["per_class_iou"]) == ["background", "square", "bar"]
    code, _, err = _run(["predict", run, root / "images" / "img7.jpg", "--out", tmp_path / "pred"], capsys)
    assert code == 0, err
    mask = Image.open(tmp_path / "pred" / "img7_mask.png")
    assert mask.size == (40, 36) and int(np.asarray(mask).max()) < 3

    (root / "val.txt").write_text("img1.jpg\nmore/img0\n")
    assert [i for i, _ in folder_entries(root, "val", 3)] == ["images/img1.jpg", "images/more/img0.jpg"]
    assert len(folder_entries(root, "labeled", 3)) == 4


def test_folder_dataset_bad_input_names_the_file_and_value(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "bad", bad=(2, 7))
    code, _, err = _run(["train", "folder/supervised", f"data.root={root}", f"run.dir={tmp_path / 'r'}",
                         *FOLDER_TINY], capsys)
    assert code == 2 and "Traceback" not in err
    assert str(root / "masks" / "img2.png") in err and "unknown label id 7 (expected 0..2 or 255)" in err

    code, _, err = _run(["train", "folder/supervised", f"data.root={root}", "data.num_classes=5",
                         f"run.dir={tmp_path / 'r'}", *FOLDER_TINY], capsys)
    assert code == 2 and str(root / "classes.txt") in err and "lists 3 classes but data.num_classes=5" in err

    (root / "classes.txt").unlink()
    code, _, err = _run(["train", "folder/supervised", f"data.root={root}", f"run.dir={tmp_path / 'r'}",
                         *FOLDER_TINY], capsys)
    assert code == 2 and f"{root / 'classes.txt'}: not found" in err
    assert not (tmp_path / "r").exists()

    lone = _folder_dataset(tmp_path / "lone", n_labeled=3)
    Image.fromarray(np.zeros((36, 40), np.uint8)).save(lone / "masks" / "ghost.png")
    code, _, err = _run(["train", "folder/supervised", f"data.root={lone}", f"run.dir={tmp_path / 'r2'}",
                         *FOLDER_TINY], capsys)
    assert code == 2 and "ghost.png: no image images/ghost.*" in err
