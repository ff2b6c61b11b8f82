"""The embedded ``digits`` dataset: segmentation scenes made of real handwritten digits.

Every scene is composed from the 1,797 real 8x8 handwritten digits that ship inside
scikit-learn (``sklearn.datasets.load_digits``, the UCI optical-recognition set): one to
three digits, scaled up, coloured and placed on a smooth colour-gradient background with
pixel noise. There are 11 classes: 0 = background and ``d + 1`` = digit ``d``.

Labels follow PASCAL VOC: a stroke pixel carries its digit's class, and a thin band of
255 ("void", ignored by every loss and metric) covers the anti-aliased rim where the
stroke fades into the background, like VOC's object borders.

Train and val scenes draw their digits from *disjoint* halves of the source images, so
val mIoU measures generalisation to unseen handwriting. Everything is a pure function of
``seed``: the same seed writes byte-identical files.

``write_digits`` writes the scenes in the PASCAL VOC layout (``JPEGImages/*.jpg`` and
``SegmentationClass/*.png`` palette PNGs) together with split
files in the official UniMatch format (``splits/<split>/labeled.txt``,
``unlabeled.txt`` and ``splits/val.txt``), so the same loader reads digits and VOC. It
only ever writes into a missing or empty folder, or one it made itself (``digits.json`` or
the ``.s4kit-digits-building`` marker of an interrupted build): ``check_digits_root``.

Difficulty (calibrated in the foundation issue, numbers in the README): with the
``digits`` presets, supervised training on ``1_16`` stays more than 15 mIoU points below
supervised training on ``full``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import first_line as _first_line
from .datasets import DataError
from .palette import voc_palette
from ..labels import CLASS_NAMES as _NAMES, IGNORE_INDEX

CLASS_NAMES = _NAMES["digits"]
NUM_CLASSES = 11
SPLITS = {"1_32": 32, "1_16": 16, "1_8": 8, "1_4": 4, "full": 1}


@dataclass(frozen=True)
class DigitsSpec:
    """Size and difficulty knobs of the generated scenes (all lengths in pixels)."""

    image_size: int = 32
    n_train: int = 4096
    n_val: int = 512
    min_digits: int = 1
    max_digits: int = 2
    min_digit_size: int = 18
    max_digit_size: int = 26
    stroke_threshold: float = 0.45  # upsampled ink >= this -> digit class
    band_threshold: float = 0.38  # band_threshold <= ink < stroke_threshold -> 255
    noise_std: float = 0.04  # pixel noise, in [0, 1] intensity units
    val_fraction: float = 0.4  # share of the 1,797 source digits reserved for val


def source_digits(seed: int, val_fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split scikit-learn's 1,797 digits into disjoint train/val pools.

    Returns ``{"train": (images, labels), "val": (images, labels)}`` with images float32
    (N, 8, 8) in [0, 1] and labels int64 (N,) in 0..9. The split is stratified per digit.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng([seed, 0])
    train_idx, val_idx = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr, va = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
    return {"train": (images[tr], labels[tr]), "val": (images[va], labels[va])}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth two-colour gradient plus a low-frequency colour field, float32 (H, W, 3)."""
    c0, c1 = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
    coarse = rng.normal(0, 0.08, (4, 4, 3)).astype(np.float32)
    field = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c], mode="F").resize((size, size), Image.BICUBIC)) for c in range(3)],
        axis=-1,
    )
    return np.clip(bg + field, 0, 1).astype(np.float32)


def _ink(digit: np.ndarray, size: int) -> np.ndarray:
    """Upsample an 8x8 digit in [0, 1] to (size, size) with bilinear interpolation."""
    padded = np.pad(digit, 1)  # a blank rim so strokes fade out inside the box
    img = Image.fromarray(padded.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    return np.clip(np.asarray(img), 0, 1)


def render_scene(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, spec: DigitsSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Compose one scene.

    Args:
        rng: the scene's own generator (the scene is a pure function of its state).
        images, labels: the source pool, float32 (N, 8, 8) in [0, 1] and int64 (N,).
        spec: size and difficulty knobs.

    Returns:
        image uint8 (H, W, 3) and mask uint8 (H, W) with values in {0..10, 255}.
    """
    S = spec.image_size
    canvas = _background(rng, S)
    mask = np.zeros((S, S), np.uint8)
    occupied = np.zeros((S, S), bool)
    n = int(rng.integers(spec.min_digits, spec.max_digits + 1))
    for _ in range(n):
        k = int(rng.integers(len(images)))
        size = int(rng.integers(spec.min_digit_size, spec.max_digit_size + 1))
        ink = _ink(images[k], size)
        for _attempt in range(20):  # non-overlapping placement by rejection
            y, x = (int(v) for v in rng.integers(0, S - size + 1, 2))
            if not occupied[y : y + size, x : x + size].any():
                break
        else:
            continue  # no free room left: the scene keeps fewer digits
        occupied[y : y + size, x : x + size] = True
        local_bg = canvas[y : y + size, x : x + size].mean(axis=(0, 1))
        colour = rng.uniform(0, 1, 3)
        while np.abs(colour - local_bg).max() < 0.45:  # keep the digit visible
            colour = rng.uniform(0, 1, 3)
        a = ink[..., None]
        canvas[y : y + size, x : x + size] = canvas[y : y + size, x : x + size] * (1 - a) + colour * a
        region = mask[y : y + size, x : x + size]
        region[ink >= spec.band_threshold] = IGNORE_INDEX
        region[ink >= spec.stroke_threshold] = labels[k] + 1
    canvas = canvas + rng.normal(0, spec.noise_std, canvas.shape)
    return (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8), mask


def generate(seed: int = 0, spec: DigitsSpec = DigitsSpec()):
    """Yield ``(split, index, image, mask)`` for every scene; deterministic in ``seed``.

    ``split`` is ``"train"`` (``spec.n_train`` scenes) or ``"val"`` (``spec.n_val``).
    The scene ``i`` of ``split`` uses ``np.random.default_rng([seed, split_id, i])``.
    """
    pools = source_digits(seed, spec.val_fraction)
    for split_id, (split, n) in enumerate((("train", spec.n_train), ("val", spec.n_val)), start=1):
        images, labels = pools[split]
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            image, mask = render_scene(rng, images, labels, spec)
            yield split, i, image, mask


MARKER = ".s4kit-digits-building"  # holds the stamp while a build is in progress


def _stamp(seed: int, spec: DigitsSpec) -> dict:
    return {"seed": seed, "spec": asdict(spec)}


def _read_stamp(path: Path) -> dict:
    """The JSON stamp in ``digits.json`` or the build marker; ``DataError`` if it is not one."""
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable digits stamp ({_first_line(exc)}); choose another --root "
                        "or delete it") from exc
    if not (isinstance(stamp, dict) and "seed" in stamp and isinstance(stamp.get("spec"), dict)):
        raise DataError(f"{path}: not an s4kit digits stamp (expected {{'seed': ..., 'spec': {{...}}}}); "
                        "choose another --root or delete it")
    return stamp


def _stamp_diff(found: dict, wanted: dict) -> str:
    """One line naming what differs, e.g. ``seed=1 (asked 0), n_train=128 (asked 4096)``."""
    flat = lambda s: {"seed": s.get("seed"), **s.get("spec", {})}  # noqa: E731
    f, w = flat(found), flat(wanted)
    return ", ".join(f"{k}={f.get(k)!r} (asked {w.get(k)!r})" for k in sorted(set(f) | set(w), key=str)
                     if f.get(k) != w.get(k))


def _foreign_entry(root: Path, entries: list[Path]) -> str:
    """A file found in ``root`` (relative POSIX path), for the refusal message; a folder if no file."""
    files = sorted(e for e in entries if not e.is_dir())
    if files:
        return files[0].name
    for dirpath, dirnames, filenames in os.walk(min(entries)):
        if filenames:
            return (Path(dirpath) / min(filenames)).relative_to(root).as_posix()
        dirnames.sort()
    return min(entries).name + "/"


def _root_state(root: Path, stamp: dict, accept_any: bool = False) -> str:
    """Classify ``root``: ``"done"`` (holds ``digits.json``), ``"resume"`` (holds our build
    marker), ``"new"`` (missing or empty). ``accept_any`` accepts any ``digits.json`` stamp.

    Raises:
        DataError: ``root`` is not a folder; holds a digits dataset or an interrupted build
            with another seed or spec; or is non-empty without an s4kit marker. Writes nothing.
    """
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"{root}: is a broken symbolic link; choose an empty or new --root")
        return "new"
    if not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; choose an empty or new --root")
    meta, marker = root / "digits.json", root / MARKER
    for path, what, state in ((meta, "holds digits written", "done"),
                              (marker, "holds an interrupted digits build", "resume")):
        if path.exists():
            found = _read_stamp(path)
            if found != stamp and not (accept_any and state == "done"):
                raise DataError(f"{path}: this folder {what} with another seed or spec ({_stamp_diff(found, stamp)}); "
                                "choose another --root or delete it")
            return state
    try:
        entries = [e for e in root.iterdir() if not re.fullmatch(rf"\.{re.escape(MARKER)}\.\d+\.tmp", e.name)]
    except OSError as exc:
        raise DataError(f"{root}: cannot list the folder ({_first_line(exc)})") from exc
    if entries:
        more = ", ..." if len(entries) > 1 or entries[0].is_dir() else ""
        raise DataError(f"{root}: not empty and not an s4kit digits dataset (holds {_foreign_entry(root, entries)!r}"
                        f"{more}); choose an empty or new --root")
    return "new"


def check_digits_root(root: str | Path, seed: int = 0, spec: DigitsSpec = DigitsSpec(), *,
                      accept_any: bool = False) -> None:
    """Check that ``write_digits(root, seed, spec)`` may use ``root``, writing nothing.

    Accepted: a missing or empty folder, a folder holding this exact dataset (``digits.json``
    equal to the seed and spec) or an interrupted build of it (the ``.s4kit-digits-building``
    marker with the same stamp). ``accept_any=True`` also accepts a finished digits dataset
    written with any seed or spec: what ``ensure_digits(root, seed)`` accepts.

    Raises:
        DataError (one line): ``root`` is a file; holds a digits dataset or interrupted build
            with another seed or spec (the message names the fields that differ); or is a
            non-empty folder s4kit did not make (the message names a file found there).
    """
    _root_state(Path(root), _stamp(seed, spec), accept_any)


def write_digits(root: str | Path, seed: int = 0, spec: DigitsSpec = DigitsSpec(), progress: bool = True) -> Path:
    """Write the digits dataset to ``root`` in the PASCAL VOC layout with official split files.

    Layout::

        root/JPEGImages/{train,val}_NNNNN.jpg      RGB, JPEG quality 95
        root/SegmentationClass/{train,val}_NNNNN.png  palette PNG, class ids, 255 = void
        root/splits/<split>/labeled.txt, unlabeled.txt   for 1_32 1_16 1_8 1_4 full
        root/splits/val.txt
        root/digits.json                                 seed and spec, for provenance

    The labeled lists are nested (1_32 ⊂ 1_16 ⊂ 1_8 ⊂ 1_4 ⊂ full), drawn from one seeded
    permutation; ``unlabeled`` is the rest of the train pool, and for ``full`` (where
    nothing is left) the whole train pool, as in ReCo's partial-label mode.

    s4kit never writes into a folder it did not make: ``check_digits_root`` runs first. The
    first write into a new root is the marker ``.s4kit-digits-building`` (the stamp JSON),
    so a killed build is resumed (rebuilt from scratch) by the next call with the same seed
    and spec; the split lists and ``digits.json`` are written atomically, and the marker is
    removed once ``digits.json`` exists.

    Returns the root path (untouched if it already holds this exact dataset).

    Raises:
        DataError (one line): a refused root, see ``check_digits_root`` (then nothing is
            written); or a file that cannot be written (the message names it).
    """
    from tqdm.auto import tqdm

    from ..io import atomic_write_text
    from .splits import write_split_lists

    root = Path(root)
    stamp = _stamp(seed, spec)
    check_digits_root(root, seed, spec)
    meta = root / "digits.json"
    if meta.exists():
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / MARKER, json.dumps(stamp))
        (root / "JPEGImages").mkdir(exist_ok=True)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        palette = voc_palette()
        lines = {"train": [], "val": []}
        total = spec.n_train + spec.n_val
        for split, i, image, mask in tqdm(generate(seed, spec), total=total, desc="digits", disable=not progress):
            name = f"{split}_{i:05d}"
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            m = Image.fromarray(mask, mode="P")
            m.putpalette(palette)
            m.save(root / "SegmentationClass" / f"{name}.png")
            lines[split].append(f"JPEGImages/{name}.jpg SegmentationClass/{name}.png")
        write_split_lists(root / "splits", lines["train"], lines["val"], SPLITS, seed=seed)
        atomic_write_text(meta, json.dumps(stamp, indent=1))
        (root / MARKER).unlink(missing_ok=True)
    except OSError as exc:
        where = exc.filename if getattr(exc, "filename", None) else root
        raise DataError(f"{where}: cannot write the digits dataset ({_first_line(exc)})") from exc
    return root


def ensure_digits(root: str | Path, seed: int = 0) -> Path:
    """Build the default digits dataset at ``root`` unless a digits dataset is already there.

    Unlike ``write_digits`` this accepts a dataset written with any seed or spec (for
    example the small one the tests build), so notebooks can point ``DATA_ROOT`` at it.

    Raises:
        DataError (one line, nothing written): ``root`` is a file, a non-empty folder s4kit
            did not make, or holds an interrupted build with another seed or spec.
    """
    root = Path(root)
    check_digits_root(root, seed, accept_any=True)
    if (root / "digits.json").exists():
        return root
    return write_digits(root, seed=seed)
