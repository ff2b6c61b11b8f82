"""Reliability of the data layer: never writing into a user's folder, split files that stay
inside the dataset root, hostile or damaged images and weight files, one-line errors."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import s4kit.io
from s4kit.data import digits as digits_mod
from s4kit.data.datasets import DataError, SegmentationDataset, read_image, read_mask
from s4kit.data.digits import MARKER, DigitsSpec, check_digits_root, ensure_digits, write_digits
from s4kit.data.splits import SplitError, generate_splits, read_split_file
from s4kit.errors import S4kitError
from s4kit.models import SmallEncoder, WeightsError, load_encoder_weights

TINY = DigitsSpec(n_train=12, n_val=4)
SPLIT_LISTS = [f"splits/{s}/{k}.txt" for s in ("1_32", "1_16", "1_8", "1_4", "full")
               for k in ("labeled", "unlabeled")] + ["splits/val.txt"]


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (folders too) -> sha256 of its bytes ('dir' for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert isinstance(exc_info.value, S4kitError)
    return msg


def voc_like_folder(root: Path) -> None:
    """A user's folder that s4kit did not make: a few VOC files and a note."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / "JPEGImages" / "2007_000032.jpg")
    Image.fromarray(rng.integers(0, 21, (12, 10)).astype(np.uint8), mode="L").save(
        root / "SegmentationClass" / "2007_000032.png")


# ---------------------------------------------------------------- digits: whose folder is it


@pytest.mark.parametrize("extra", [None, "notes.txt", ".DS_Store"])
def test_write_digits_refuses_a_folder_it_did_not_make_and_writes_nothing(tmp_path, extra):
    root = tmp_path / "VOC2012"
    voc_like_folder(root)
    if extra:
        (root / extra).write_text("mine\n")
    before = snapshot(root)
    for call in (lambda: write_digits(root, seed=0, spec=TINY, progress=False),
                 lambda: check_digits_root(root, seed=0, spec=TINY),
                 lambda: check_digits_root(root, accept_any=True),
                 lambda: ensure_digits(root)):
        with pytest.raises(DataError) as exc:
            call()
        msg = one_line(exc)
        named = extra or "JPEGImages/2007_000032.jpg"
        assert msg.startswith(f"{root}: not empty and not an s4kit digits dataset (holds {named!r}, ...)"), msg
        assert "choose an empty or new --root" in msg
        assert snapshot(root) == before  # byte-identical, nothing added (no marker, no folder)


def test_write_digits_refuses_a_file_root_and_a_root_under_a_file(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"\x00user data\xff" * 100)
    before = f.read_bytes()
    with pytest.raises(DataError) as exc:
        write_digits(f, spec=TINY, progress=False)
    assert one_line(exc).startswith(f"{f}: exists and is not a folder")
    with pytest.raises(DataError):
        check_digits_root(f)
    with pytest.raises(DataError) as exc:
        ensure_digits(f)
    one_line(exc)
    with pytest.raises(DataError) as exc:
        write_digits(f / "digits", spec=TINY, progress=False)
    assert str(f / "digits") in one_line(exc) or str(f) in str(exc.value)
    assert f.read_bytes() == before and sorted(tmp_path.iterdir()) == [f]


def test_write_digits_builds_into_new_or_empty_roots_and_keeps_a_finished_one(tmp_path):
    new, empty = tmp_path / "a" / "new", tmp_path / "empty"
    empty.mkdir()
    check_digits_root(new, spec=TINY)  # no error and nothing written
    assert not new.exists() and not (tmp_path / "a").exists()
    for root in (new, empty):
        assert write_digits(root, seed=0, spec=TINY, progress=False) == root
        assert not (root / MARKER).exists()
        assert json.loads((root / "digits.json").read_text()) == {"seed": 0, "spec": TINY.__dict__}
        assert all((root / s).is_file() for s in SPLIT_LISTS)
        assert len(list((root / "JPEGImages").iterdir())) == 16
        assert not [p for p in root.rglob("*.tmp")]
    assert snapshot(new) == snapshot(empty)  # deterministic
    before = snapshot(new)
    write_digits(new, seed=0, spec=TINY, progress=False)  # same stamp: untouched
    check_digits_root(new, seed=0, spec=TINY)
    assert ensure_digits(new) == new  # any stamp is accepted by ensure_digits ...
    check_digits_root(new, accept_any=True)  # ... and by the check made before it
    with pytest.raises(DataError, match="n_train=12 \\(asked 4096\\)"):
        check_digits_root(new)  # the default spec
    assert snapshot(new) == before


def test_write_digits_with_another_seed_or_spec_is_refused_in_one_line(tmp_path):
    root = tmp_path / "d"
    write_digits(root, seed=0, spec=TINY, progress=False)
    before = snapshot(root)
    with pytest.raises(DataError) as exc:
        write_digits(root, seed=3, spec=TINY, progress=False)
    msg = one_line(exc)
    assert msg.startswith(f"{root / 'digits.json'}: ") and "seed=0 (asked 3)" in msg and "n_train" not in msg
    with pytest.raises(DataError) as exc:
        check_digits_root(root, seed=0, spec=DigitsSpec(n_train=20, n_val=4))
    assert "n_train=12 (asked 20)" in one_line(exc)
    (root / "digits.json").write_text("{ not json")
    with pytest.raises(DataError) as exc:
        ensure_digits(root)
    assert one_line(exc).startswith(f"{root / 'digits.json'}: unreadable digits stamp")
    (root / "digits.json").write_text(json.dumps({"seed": 0, "spec": TINY.__dict__}, indent=1))
    assert snapshot(root) == before


class Killed(BaseException):
    """Stands in for SIGKILL/KeyboardInterrupt in the middle of a build."""


def kill_after(monkeypatch, n: int) -> None:
    real = digits_mod.generate

    def generate(seed, spec):
        for k, item in enumerate(real(seed, spec)):
            if k == n:
                raise Killed
            yield item
    monkeypatch.setattr(digits_mod, "generate", generate)


@pytest.mark.parametrize("killed_at", [0, 7])
def test_a_killed_build_is_resumed_and_guarded_by_its_marker(tmp_path, monkeypatch, killed_at):
    root, ref = tmp_path / "root", tmp_path / "ref"
    with monkeypatch.context() as m:
        kill_after(m, killed_at)
        with pytest.raises(Killed):
            write_digits(root, seed=0, spec=TINY, progress=False)
    # the marker was the first write: it is there even if nothing else was written
    assert json.loads((root / MARKER).read_text()) == {"seed": 0, "spec": TINY.__dict__}
    assert not (root / "digits.json").exists()
    assert len(list((root / "JPEGImages").iterdir())) == killed_at
    partial = snapshot(root)
    # another seed or spec must not take over the interrupted build
    for call in (lambda: write_digits(root, seed=1, spec=TINY, progress=False),
                 lambda: check_digits_root(root, seed=0, spec=DigitsSpec(n_train=13, n_val=4)),
                 lambda: check_digits_root(root, accept_any=True),  # only finished datasets of any stamp
                 lambda: ensure_digits(root)):  # ensure_digits builds the default spec
        with pytest.raises(DataError) as exc:
            call()
        msg = one_line(exc)
        assert msg.startswith(f"{root / MARKER}: this folder holds an interrupted digits build"), msg
        assert snapshot(root) == partial
    # the same stamp continues it; the result equals an uninterrupted build
    check_digits_root(root, seed=0, spec=TINY)
    write_digits(root, seed=0, spec=TINY, progress=False)
    write_digits(ref, seed=0, spec=TINY, progress=False)
    assert not (root / MARKER).exists()
    assert snapshot(root) == snapshot(ref)


def test_a_stale_marker_temp_file_alone_does_not_make_a_folder_foreign(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / f".{MARKER}.12345.tmp").write_text('{"seed": 0')  # killed while writing the marker
    write_digits(root, seed=0, spec=TINY, progress=False)
    assert (root / "digits.json").is_file()


def test_digits_json_and_split_lists_are_written_atomically(tmp_path, monkeypatch):
    written = []
    real = s4kit.io.atomic_write_text

    def spy(path, text):
        written.append(Path(path).relative_to(tmp_path).as_posix().removeprefix("d/"))
        real(path, text)
    monkeypatch.setattr(s4kit.io, "atomic_write_text", spy)
    write_digits(tmp_path / "d", seed=0, spec=TINY, progress=False)
    assert len(written) == 13
    assert written[0] == MARKER and written[-1] == "digits.json"
    assert sorted(written[1:-1]) == sorted(SPLIT_LISTS)

    # a failure while replacing digits.json leaves no digits.json, and the build resumable
    def failing_replace(src, dst):
        raise OSError(28, "No space left on device", str(dst))
    root = tmp_path / "e"
    with monkeypatch.context() as m:
        m.setattr(s4kit.io.os, "replace", lambda src, dst: failing_replace(src, dst) if str(dst).endswith(
            "digits.json") else os.rename(src, dst))
        with pytest.raises(DataError) as exc:
            write_digits(root, seed=0, spec=TINY, progress=False)
    assert "No space left on device" in one_line(exc)
    assert not (root / "digits.json").exists() and (root / MARKER).exists()
    assert not list(root.glob(".*.tmp"))
    write_digits(root, seed=0, spec=TINY, progress=False)
    assert (root / "digits.json").is_file() and not (root / MARKER).exists()


def test_generate_splits_writes_each_list_atomically(tmp_path, monkeypatch):
    pool = tmp_path / "train_aug.txt"
    pool.write_text("".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png\n" for i in range(30)))
    out = tmp_path / "splits"
    (out / "a").mkdir(parents=True)
    (out / "a" / "labeled.txt").write_text("old\n")
    written = []
    real = s4kit.io.atomic_write_text
    monkeypatch.setattr(s4kit.io, "atomic_write_text", lambda p, t: (written.append(Path(p)), real(p, t)))
    generate_splits(pool, out, {"a": 4, "b": 9}, seed=1)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "a/labeled.txt", "a/unlabeled.txt", "b/labeled.txt", "b/unlabeled.txt"]
    assert len(read_split_file(out / "a" / "labeled.txt")) == 4 and not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------- split files


GOOD = ["JPEGImages/a.jpg SegmentationClass/a.png", "JPEGImages/b.jpg SegmentationClass/b.png"]


@pytest.mark.parametrize("line, bad", [
    ("/etc/passwd SegmentationClass/c.png", "/etc/passwd"),
    ("JPEGImages/../../secret.jpg SegmentationClass/c.png", "JPEGImages/../../secret.jpg"),
    ("JPEGImages/c.jpg ../other/c.png", "../other/c.png"),
    ("JPEGImages/c.jpg /abs/c.png", "/abs/c.png"),
    ("..\\up\\c.jpg", "..\\up\\c.jpg"),
    ("C:\\data\\c.jpg SegmentationClass/c.png", "C:\\data\\c.jpg"),
    ("..", ".."),
])
def test_split_entries_must_stay_inside_the_dataset_root(tmp_path, line, bad):
    f = tmp_path / "labeled.txt"
    f.write_text("\n".join(GOOD + [line, "JPEGImages/d.jpg SegmentationClass/d.png"]) + "\n")
    with pytest.raises(SplitError) as exc:
        read_split_file(f)
    assert one_line(exc) == (f"{f}:3: path {bad!r} leaves the dataset root "
                             "(absolute paths and '..' are not allowed)")


def test_dotted_names_and_windows_line_ends_are_fine(tmp_path):
    f = tmp_path / "val.txt"
    f.write_bytes(b"\xef\xbb\xbfJPEGImages/a..b.jpg SegmentationClass/a..b.png\r\n"
                  b"./JPEGImages/.hidden.jpg\r\n\r\nJPEGImages/c.jpg   SegmentationClass/c.png")
    assert read_split_file(f) == [("JPEGImages/a..b.jpg", "SegmentationClass/a..b.png"),
                                  ("./JPEGImages/.hidden.jpg", None),
                                  ("JPEGImages/c.jpg", "SegmentationClass/c.png")]


def test_non_utf8_split_file_names_the_byte_and_offset(tmp_path):
    f = tmp_path / "unlabeled.txt"
    data = ("\n".join(GOOD) + "\n").encode() + b"JPEGImages/caf\xe9.jpg\n"
    f.write_bytes(data)
    with pytest.raises(SplitError) as exc:
        read_split_file(f)
    offset = data.index(b"\xe9")
    assert offset == 96
    assert one_line(exc) == f"{f}:3: not UTF-8 text (byte 0xe9 at offset {offset})"
    f.write_bytes(b"\xff\xfeJ\x00P\x00")  # UTF-16 from a Windows editor
    with pytest.raises(SplitError, match=r"not UTF-8 text \(byte 0xff at offset 0\)"):
        read_split_file(f)


def test_duplicate_entries_name_both_lines(tmp_path):
    f = tmp_path / "labeled.txt"
    lines = [f"JPEGImages/{c}.jpg SegmentationClass/{c}.png" for c in "abcde"]
    f.write_text("\n".join(lines[:2] + ["", lines[2]] + lines[3:] + ["JPEGImages/c.jpg SegmentationClass/x.png"]))
    with pytest.raises(SplitError) as exc:
        read_split_file(f)
    assert one_line(exc) == f"{f}:7: duplicate of line 4 (JPEGImages/c.jpg)"
    f.write_text("JPEGImages/a.jpg\nJPEGImages/b.jpg\n./JPEGImages/a.jpg\n")
    with pytest.raises(SplitError, match=r":3: duplicate of line 1 \(\./JPEGImages/a\.jpg\)"):
        read_split_file(f)
    f.write_text("JPEGImages/a.jpg SegmentationClass/a.png\nJPEGImages/b.jpg SegmentationClass/a.png\n")
    assert len(read_split_file(f)) == 2  # a shared mask is not a duplicate image


def test_split_path_that_is_a_folder_or_unreadable(tmp_path, monkeypatch):
    (tmp_path / "val.txt").mkdir()
    with pytest.raises(SplitError) as exc:
        read_split_file(tmp_path / "val.txt")
    assert one_line(exc) == f"{tmp_path / 'val.txt'}: is a folder, not a split file"
    f = tmp_path / "labeled.txt"
    f.write_text("\n".join(GOOD))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(SplitError) as exc:
        read_split_file(f)
    assert one_line(exc) == f"{f}: cannot read split file (Permission denied)"


def test_dataset_refuses_escaping_split_before_touching_files(tmp_path):
    voc_like_folder(tmp_path / "voc")
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (10, 12)).save(outside)
    f = tmp_path / "s.txt"
    f.write_text("JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n../outside.jpg "
                 "SegmentationClass/2007_000032.png\n")
    with pytest.raises(SplitError, match=r"s.txt:2: path '\.\./outside\.jpg' leaves the dataset root"):
        SegmentationDataset(tmp_path / "voc", f, 21)


# ---------------------------------------------------------------- images


def png_claiming(path: Path, width: int, height: int, mode: str = "L") -> None:
    """A tiny valid PNG whose IHDR says ``width`` x ``height`` (CRC recomputed)."""
    buf = io.BytesIO()
    Image.new(mode, (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("w, h", [(20000, 20000), (10000, 10000)])  # over 2x Pillow's limit, and between
def test_decompression_bomb_is_refused_on_open(tmp_path, monkeypatch, w, h):
    png_claiming(tmp_path / "bomb.png", w, h)
    png_claiming(tmp_path / "bomb_rgb.png", w, h, "RGB")
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or pytest.fail("decoded"))
    for fn, name in ((read_image, "bomb_rgb.png"), (lambda p: read_mask(p, 21), "bomb.png")):
        with pytest.raises(DataError) as exc:
            fn(tmp_path / name)
        msg = one_line(exc)
        assert msg.startswith(f"{tmp_path / name}: image too large: ") and f"{w * h} pixels" in msg, msg
        with warnings.catch_warnings():  # Pillow's own warning turned into an error (python -W error)
            warnings.simplefilter("error")
            with pytest.raises(DataError, match="image too large"):
                fn(tmp_path / name)
    assert not decoded  # refused from the header, no pixel buffer


def test_truncated_images_and_masks_are_one_line_data_errors(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    Image.fromarray(rng.integers(0, 21, (48, 64)).astype(np.uint8), mode="L").save(tmp_path / "full.png")
    for name in ("full.jpg", "full.png"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / "cut_full.jpg")
    assert one_line(exc).startswith(f"{tmp_path / 'cut_full.jpg'}: unreadable image (image file is truncated")
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / "cut_full.png")
    assert "truncated" in one_line(exc) and str(tmp_path / "cut_full.png") in str(exc.value)
    with pytest.raises(DataError) as exc:
        read_mask(tmp_path / "cut_full.png", 21)
    assert one_line(exc).startswith(f"{tmp_path / 'cut_full.png'}: unreadable label image (image file is truncated")
    assert read_image(tmp_path / "full.jpg").shape == (48, 64, 3)  # the intact files still read


def test_label_errors_are_not_wrapped_twice(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError) as exc:
        read_mask(tmp_path / "rgb.png", 21)
    assert one_line(exc) == (f"{tmp_path / 'rgb.png'}: label image has mode 'RGB'; "
                             "expected a palette or grayscale PNG")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "text.png").write_text("line one\nline two\n")
    for name in ("folder.png", "text.png"):
        for fn in (read_image, lambda p: read_mask(p, 21)):
            with pytest.raises(DataError) as exc:
                fn(tmp_path / name)
            assert one_line(exc).startswith(f"{tmp_path / name}: unreadable ")


# ---------------------------------------------------------------- pretrained weights


class Evil:
    """Pickles to a call of ``os.mkdir``: must never run under ``weights_only=True``."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


@pytest.mark.parametrize("payload, got", [
    (torch.zeros(3), "got Tensor"),
    ([torch.zeros(3), torch.ones(2)], "got list"),
    ({"state_dict": (torch.zeros(1),)}, "got a dict with 'state_dict' of type tuple"),
    ({"stage1.0.0.weight": torch.zeros(1), "epoch": 3}, "got a dict with 'epoch' of type int"),
    ({"model": {"stage1.0.0.weight": [1.0]}}, "got a dict with 'stage1.0.0.weight' of type list"),
])
def test_weights_that_are_not_a_state_dict(tmp_path, payload, got):
    p = tmp_path / "w.pth"
    torch.save(payload, p)
    with pytest.raises(WeightsError) as exc:
        load_encoder_weights(SmallEncoder(8), p)
    assert one_line(exc) == f"{p}: expected a state dict (a dict of tensors), " + got


def test_weights_unpickling_errors_keep_one_line_and_weights_only(tmp_path):
    flag = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"stage1.0.0.weight": torch.zeros(1), "x": Evil(str(flag))}, p)
    with pytest.raises(WeightsError) as exc:
        load_encoder_weights(SmallEncoder(8), p)
    assert one_line(exc).startswith(f"{p}: cannot read pretrained weights (")
    assert not flag.exists()  # weights_only=True: the pickled call never ran
    for name, data in (("junk.pth", b"PK\x03\x04 not a zip\n\n\nmore\n"), ("empty.pth", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError) as exc:
            load_encoder_weights(SmallEncoder(8), tmp_path / name)
        assert one_line(exc).startswith(f"{tmp_path / name}: cannot read pretrained weights (")
    good = SmallEncoder(8)
    torch.save({"state_dict": {f"module.{k}": v for k, v in good.state_dict().items()}}, tmp_path / "ok.pth")
    dst = SmallEncoder(8)
    load_encoder_weights(dst, tmp_path / "ok.pth")
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), good.state_dict().values()))
