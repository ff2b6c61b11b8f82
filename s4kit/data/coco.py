"""COCO 2017 as a semantic segmentation dataset: 81 classes, background + the 80 "thing" categories.

This is the protocol of PseudoSeg / PC²Seg that UniMatch (CVPR 2023) and AllSpark (CVPR 2024)
adopt (docs/methods/substrate.md §2 "datasets", docs/methods/allspark.md §8):

* class 0 is the background (every pixel no instance covers; UniMatch's ``util/classes.py``
  calls it ``void`` but trains and scores it as a class), classes 1..80 are the 80 thing
  categories **in increasing COCO category id** (COCO's ids run 1..90 with 10 gaps), so
  ``person`` (id 1) is 1, ``stop sign`` (id 13) is 12 and ``toothbrush`` (id 90) is 80;
* the masks are single-channel PNGs holding that class index (255 = ignore), one per image,
  all in one folder ``masks/<12-digit image id>.png`` beside ``train2017/`` and ``val2017/``;
* the split lists are UniMatch's ``splits/coco/{1_512,1_256,1_128,1_64,1_32}/{labeled,unlabeled}.txt``
  and ``splits/coco/val.txt`` (232 / 463 / 925 / 1,849 / 3,697 labeled of the 118,287 train
  images; 5,000 val), lines ``train2017/000000177254.jpg masks/000000177254.png``.

UniMatch and AllSpark ship the masks pre-converted and do not publish how they were made.
``build_coco_masks`` makes them from the official ``instances_{train,val}2017.json`` with
``pycocotools`` (an optional dependency: ``pip install pycocotools``) under s4kit's own,
documented rule (``paint_semantic_mask``); where instances of different classes overlap it may
differ from the distributed PNGs, so use those to compare with the papers' numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import S4kitError
from ..labels import CLASS_NAMES, IGNORE_INDEX
from .datasets import DataError

# The 80 thing category ids of COCO 2017 (instances_*.json "categories"), in increasing order;
# the ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused.
COCO_THING_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
                  31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
                  56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
                  85, 86, 87, 88, 89, 90)
NUM_CLASSES = 1 + len(COCO_THING_IDS)  # 81

# COCO category id (0..255) -> class index 1..80; -1 for an id that is not a thing category.
COCO_ID_TO_CLASS = np.full(256, -1, np.int64)
COCO_ID_TO_CLASS[list(COCO_THING_IDS)] = np.arange(1, NUM_CLASSES)

assert len(CLASS_NAMES["coco"]) == NUM_CLASSES


class MissingDependencyError(S4kitError, ImportError):
    """An optional package a command needs is not installed (the message names it)."""


def category_to_class(category_id: int, source: str | Path = "annotations") -> int:
    """The class index 1..80 of a COCO thing category id.

    Raises:
        DataError (one line, naming ``source`` and the id): not one of the 80 thing ids.
    """
    cid = int(category_id)
    if not 0 <= cid < 256 or COCO_ID_TO_CLASS[cid] < 0:
        raise DataError(f"{source}: unknown COCO category id {cid} (expected one of the 80 thing ids 1..90)")
    return int(COCO_ID_TO_CLASS[cid])


def paint_semantic_mask(height: int, width: int, instances, source: str | Path = "annotations") -> np.ndarray:
    """One semantic label map from instance masks (s4kit's rule; UniMatch's is not published).

    Every pixel starts as background 0; each pixel an instance covers takes that instance's
    class index (``category_to_class``); a pixel covered by instances of two or more
    *different* classes is ambiguous and becomes 255 (ignore). Instances of one class may
    overlap freely, and crowd annotations (``iscrowd=1``) count as their class: a semantic
    map does not tell instances apart. The result does not depend on the annotation order.

    Args:
        height, width: the image size H, W in pixels.
        instances: iterable of ``(category_id, mask)`` with ``mask`` bool/uint8 (H, W),
            nonzero where the instance is.
        source: named in errors (the annotation file).

    Returns:
        uint8 (H, W): 0 background, 1..80 classes, 255 ambiguous.

    Raises:
        DataError (one line, naming ``source``): an unknown category id, or an instance mask
            whose shape is not (H, W).
    """
    label = np.zeros((height, width), np.uint8)
    covered = np.zeros((height, width), bool)
    clash = np.zeros((height, width), bool)
    for category_id, mask in instances:
        k = category_to_class(category_id, source)
        m = np.asarray(mask)
        if m.shape != (height, width):
            raise DataError(f"{source}: instance mask of category {category_id} has shape {m.shape}, "
                            f"the image is {height}x{width}")
        m = m.astype(bool)
        clash |= m & covered & (label != k)  # another class got here first
        label[m & ~covered] = k
        covered |= m
    label[clash] = IGNORE_INDEX
    return label


def _pycocotools():
    """``pycocotools.coco.COCO``, or a ``MissingDependencyError`` naming the package."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise MissingDependencyError("building COCO masks from instances_*.json needs the package 'pycocotools' "
                                     "(pip install pycocotools), or use UniMatch's pre-converted masks "
                                     "(see data/README.md)") from exc
    return COCO


def build_coco_masks(annotations: str | Path, out_dir: str | Path, overwrite: bool = False,
                     limit: int | None = None) -> list[Path]:
    """Write ``<out_dir>/<12-digit image id>.png`` for every image of a COCO instances file.

    Each mask is ``paint_semantic_mask`` over the image's annotations (crowd ones included),
    decoded with pycocotools' ``COCO.annToMask`` (polygons and RLE), saved as a grayscale
    (mode ``L``) PNG, atomically (a kill leaves no half-written file). Images without
    annotations get an all-background mask, as in the pre-converted masks.

    Args:
        annotations: ``instances_train2017.json`` or ``instances_val2017.json``.
        out_dir: the ``masks`` folder (created).
        overwrite: rewrite masks that exist (default: keep them, so an interrupted build resumes).
        limit: only the first ``limit`` images (in the file's order), for a quick check.

    Returns:
        The written (or kept) mask paths, in the file's image order.

    Raises:
        MissingDependencyError: pycocotools is not installed.
        DataError (one line, naming the file): a missing or unreadable annotation file, an
            unknown category id.
    """
    COCO = _pycocotools()
    annotations = Path(annotations)
    if not annotations.is_file():
        raise DataError(f"{annotations}: COCO annotation file not found")
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{annotations}: not a COCO instances file ({type(exc).__name__}: {exc})".splitlines()[0]) \
            from exc
    for cat in data.get("categories", []):
        category_to_class(cat["id"], annotations)
    from ..io import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for info in data["images"][:limit]:
        path = out_dir / f"{int(info['id']):012d}.png"
        written.append(path)
        if path.exists() and not overwrite:
            continue
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]], iscrowd=None))
        label = paint_semantic_mask(int(info["height"]), int(info["width"]),
                                    ((a["category_id"], coco.annToMask(a)) for a in anns), annotations)
        with atomic_path(path) as tmp:
            Image.fromarray(label, mode="L").save(tmp, format="PNG")
    return written
