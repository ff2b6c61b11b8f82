"""One dataset class for digits, PASCAL VOC 2012, Cityscapes and COCO, driven by split files.

Every sample is a dict: ``image`` float32 (3, H, W) normalised with ``data.mean/std``,
``mask`` int64 (H, W) with class ids and 255 = ignore, ``valid`` bool (H, W) (False on
crop padding), ``id`` str, ``index`` int. Unlabeled samples
carry no ``mask``; where the dataset has hidden ground truth (digits) they carry
``hidden_mask`` instead, used only to measure pseudo-labels.

Label files (docs/methods/substrate.md §7, docs/methods/frameworks.md §B1):

* ``voc``: ``SegmentationClass`` palette PNGs and ``SegmentationClassAug`` grayscale PNGs
  both decode to class ids with ``np.asarray(Image.open(path))`` (a palette PNG stores
  indices). Values must lie in ``0..K-1`` or be 255.
* ``cityscapes``: ``*_gtFine_labelIds.png`` are mapped to the 19 train ids in code
  (``CITYSCAPES_LABEL_TO_TRAIN``); files named ``*labelTrainIds.png`` are read as train ids.
* ``coco``: UniMatch's pre-converted ``masks/*.png`` (or ``s4kit data coco``'s) hold the class
  index 0..80 (background + the 80 things, ``data/coco.py``) or 255, read as they are; a value
  above 80 is refused (a mask holding raw COCO category ids, which run to 90, is named as such).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import S4kitError, first_line as _first_line
from .splits import check_files_exist, read_split_file
from ..labels import CLASS_NAMES, IGNORE_INDEX  # noqa: F401  (CLASS_NAMES re-exported)


# Cityscapes labelIds (0..33, cityscapesScripts ``labels.py``) -> train ids (0..18, 255 = void).
_CITY_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
               26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LABEL_TO_TRAIN = np.full(256, -1, np.int64)  # -1: not a valid labelId
CITYSCAPES_LABEL_TO_TRAIN[:34] = IGNORE_INDEX
for _label_id, _train_id in _CITY_TRAIN.items():
    CITYSCAPES_LABEL_TO_TRAIN[_label_id] = _train_id

class DataError(S4kitError, ValueError):
    """An image or label file is unreadable or holds invalid values (the message names it)."""


# What a damaged or hostile file raises inside Pillow: UnidentifiedImageError and truncation
# ("image file is truncated") are OSErrors; broken PNG chunks raise SyntaxError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@contextmanager
def _open_image(path: Path, what: str):
    """``Image.open`` with every decoding failure turned into a one-line ``DataError``.

    Images over ``Image.MAX_IMAGE_PIXELS`` (a header claiming 20000x20000, say) are refused
    on open, from the header alone, before any pixel buffer is allocated (Pillow itself only
    warns below twice that limit). Set ``PIL.Image.MAX_IMAGE_PIXELS`` to change the limit.
    """
    try:
        im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning under -W error
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{pixels.group(1)} pixels" if pixels else _first_line(exc)
        raise DataError(f"{path}: image too large: {size} (limit {Image.MAX_IMAGE_PIXELS} pixels)") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: unreadable {what} ({_first_line(exc)})") from exc
    with im:
        w, h = im.size
        if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
            raise DataError(f"{path}: image too large: {w}x{h} = {w * h} pixels "
                            f"(limit {Image.MAX_IMAGE_PIXELS} pixels)")
        try:
            yield im
        except DataError:
            raise
        except _DECODE_ERRORS as exc:
            raise DataError(f"{path}: unreadable {what} ({_first_line(exc)})") from exc


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB.

    Raises:
        DataError (one line, naming the file): not an image, truncated or otherwise
            undecodable, or larger than ``PIL.Image.MAX_IMAGE_PIXELS`` ("image too large",
            refused from the header before any large allocation).
    """
    with _open_image(Path(path), "image") as im:
        return np.array(im.convert("RGB"))  # a writable copy


def read_mask(path: str | Path, num_classes: int, label_format: str = "voc") -> np.ndarray:
    """Decode a label PNG to int64 (H, W) class ids with 255 = ignore.

    Raises:
        DataError (one line, naming the file): unreadable, truncated or too large a file
            (as ``read_image``), a non-single-channel image, or a label id that is not in
            ``0..num_classes-1`` / 255 (``voc``, ``coco``) or not a Cityscapes labelId
            (``cityscapes``); the message names the offending value.
    """
    path = Path(path)
    with _open_image(path, "label image") as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise DataError(f"{path}: label image has mode {im.mode!r}; expected a palette or grayscale PNG")
        raw = np.asarray(im).astype(np.int64)
    if label_format == "cityscapes" and "labelTrainIds" not in path.name:
        bad = raw[(raw < 0) | (raw > 255)]
        mapped = CITYSCAPES_LABEL_TO_TRAIN[np.clip(raw, 0, 255)]
        if bad.size or (mapped < 0).any():
            value = int(bad[0]) if bad.size else int(raw[mapped < 0][0])
            raise DataError(f"{path}: unknown Cityscapes labelId {value} (expected 0..33)")
        return mapped
    invalid = (raw >= num_classes) & (raw != IGNORE_INDEX) | (raw < 0)
    if invalid.any():
        hint = ("; COCO masks hold the class index 1..80, not the COCO category id"
                if label_format == "coco" else "")
        raise DataError(f"{path}: unknown label id {int(raw[invalid][0])} "
                        f"(expected 0..{num_classes - 1} or 255{hint})")
    return raw


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    """Resize uint8 (H, W, 3) ``image`` (bicubic) and int64 (H, W) ``mask`` (nearest, ids
    0..255 kept exactly) to ``size = (height, width)``; arrays already that size are returned
    as they are. ReCo's Cityscapes pre-processing (docs/methods/substrate.md §7)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, mask
    image = np.array(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    if mask is not None:
        mask = np.array(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)).astype(np.int64)
    return image, mask


class SegmentationDataset(torch.utils.data.Dataset):
    """Images (and masks) listed in a split file, with a joint transform.

    Args:
        root: dataset root; split-file paths are relative to it.
        split_file: a ``labeled.txt`` / ``unlabeled.txt`` / ``val.txt`` in UniMatch format.
        num_classes: K, to validate label ids.
        transform: ``fn(image uint8 (H, W, 3), mask int64 (H, W) or None) -> (image
            float (3, h, w), mask int64 (h, w) or None, valid bool (h, w))``, e.g.
            ``transforms.TrainTransform``; ``valid`` is False on padding.
        labeled: ``True`` yields ``mask``; ``False`` yields none, or ``hidden_mask`` if
            ``hidden_gt``.
        label_format: ``voc``, ``cityscapes`` or ``coco`` (see ``read_mask``).
        cache: keep decoded arrays in memory.
        entries: the ``(image, mask or None)`` list itself (the ``folder`` dataset, which has
            no split file); ``split_file`` then only names the source in messages.
        resize: ``(height, width)`` every image and mask is resized to once when read (before
            any transform and before caching): images bicubic, masks nearest, so a mask keeps
            only ids it had. ReCo's Cityscapes protocol pre-resizes to (512, 1024)
            (docs/methods/substrate.md §7; ReCo ``dataset/cityscapes_preprocess.py``, PIL
            ``resize((1024, 512))``, bicubic in Pillow >= 7, nearest for labels). ``None``:
            native size.

    Indexing takes an int or ``(index, seed)``: with a seed, the transform's randomness
    comes from ``torch.manual_seed(seed)`` inside a forked RNG, so a sample is a pure
    function of ``(index, seed)`` (this makes resumed runs identical to uninterrupted ones).

    Raises ``SplitError`` (missing/empty split file, missing files) at construction and
    ``DataError`` (bad image or label, image/mask size mismatch) when a sample is read.
    """

    def __init__(self, root: str | Path, split_file: str | Path, num_classes: int, transform=None,
                 labeled: bool = True, hidden_gt: bool = False, label_format: str = "voc", cache: bool = False,
                 resize: tuple[int, int] | None = None, entries: list[tuple[str, str | None]] | None = None):
        self.root, self.split_file = Path(root), Path(split_file)
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.entries = read_split_file(split_file) if entries is None else list(entries)
        self.with_mask = labeled or hidden_gt
        check_files_exist(self.root, self.entries, split_file, need_masks=self.with_mask)
        self.num_classes, self.transform = num_classes, transform
        self.labeled, self.label_format = labeled, label_format
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.entries)

    def ids(self) -> list[str]:
        """Sample ids: image file names without extension."""
        return [Path(image).stem for image, _ in self.entries]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded ``(image uint8 (H, W, 3), mask int64 (H, W) or None)``, validated."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image_rel, mask_rel = self.entries[index]
        image = read_image(self.root / image_rel)
        mask = None
        if self.with_mask:
            mask = read_mask(self.root / mask_rel, self.num_classes, self.label_format)
            if mask.shape != image.shape[:2]:
                raise DataError(f"{self.root / mask_rel}: mask size {mask.shape[1]}x{mask.shape[0]} differs from "
                                f"image {self.root / image_rel} size {image.shape[1]}x{image.shape[0]}")
        if self.resize is not None:
            image, mask = resize_pair(image, mask, self.resize)
        if self.cache is not None:
            self.cache[index] = (image, mask)
        return image, mask

    def __getitem__(self, item) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.load(index)
        if self.transform is not None:
            if seed is None:
                image_t, mask_t, valid = self.transform(image, mask)
            else:
                with torch.random.fork_rng(devices=[]):
                    # seed only the CPU generator: torch.manual_seed also queues lazy seeding
                    # of every accelerator backend, which costs ~1 ms per sample
                    torch.random.default_generator.manual_seed(seed)
                    image_t, mask_t, valid = self.transform(image, mask)
        else:
            image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
            mask_t = None if mask is None else torch.from_numpy(mask)
            valid = torch.ones(image_t.shape[-2:], dtype=torch.bool)
        sample = {"image": image_t, "valid": valid, "id": Path(self.entries[index][0]).stem, "index": index}
        if mask_t is not None:
            sample["mask" if self.labeled else "hidden_mask"] = mask_t
        return sample
