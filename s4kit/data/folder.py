"""The ``folder`` dataset: your own images, with masks for some of them (data/README.md,
"Your own images").

Layout of ``data.root``::

    classes.txt            one class name per line, background first (K lines: ids 0..K-1)
    images/                any .png .jpg .jpeg .bmp .webp, any size, sub-folders allowed
    masks/                 optional: <same relative path and stem>.png, class id per pixel, 255 ignore
    val.txt                optional: the validation images, one per line (path relative to images/,
                           with or without its extension)

Which image goes where (``folder_entries``):

* **labeled** (train): every image with a mask, minus the val images;
* **unlabeled** (train): every image without a mask (no mask is needed, none is read);
* **val**: the images ``val.txt`` lists (each needs a mask); without ``val.txt``, every fifth
  masked image in name order (positions 5, 10, 15, ...: ``i % 5 == 4``), or the last masked
  image when there are fewer than five.

Every mask is checked when the lists are built, before training starts: a PNG of one channel
(palette or grayscale), the size of its image, values in ``0..K-1`` or 255. The first bad file
stops the run with one line naming it and the value.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from .datasets import DataError, read_mask
from .splits import SplitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VAL_EVERY = 5  # without val.txt: every fifth masked image (name order) is a val image


def read_classes(root: str | Path) -> list[str]:
    """The class names of ``<root>/classes.txt``: one a line (UTF-8), blank lines skipped, K >= 2.

    Raises:
        DataError (one line, naming the file): missing or unreadable, not UTF-8, fewer than two
            names, more than 255 (255 is the ignore id), or a name listed twice (with its lines).
    """
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise DataError(f"{path}: not found; the folder dataset needs classes.txt, one class name per line, "
                        "background first (data/README.md, 'Your own images')")
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    names, seen = [], {}
    for n, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise DataError(f"{path}:{n}: class {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = n
        names.append(name)
    if len(names) < 2:
        raise DataError(f"{path}: lists {len(names)} class(es); expected at least 2 (background first)")
    if len(names) > 255:
        raise DataError(f"{path}: lists {len(names)} classes; at most 255 (255 is the ignore id)")
    return names


def _images(root: Path) -> dict[str, str]:
    """``{relative path without suffix (posix): relative image path}`` of ``<root>/images``.

    Raises ``SplitError`` when the folder is missing or empty, or two images share a stem
    (``a.jpg`` and ``a.png``: one mask could not tell them apart)."""
    folder = root / "images"
    if not folder.is_dir():
        raise SplitError(f"{folder}: not found; the folder dataset reads its images from <data.root>/images "
                         "(data/README.md, 'Your own images')")
    found: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        rel = p.relative_to(root)
        key = p.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            raise SplitError(f"{p}: has the same name as {root / found[key]}; one mask masks/{key}.png cannot "
                             "tell them apart: rename one")
        found[key] = rel.as_posix()
    if not found:
        raise SplitError(f"{folder}: holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _masks(root: Path, images: dict[str, str]) -> dict[str, str]:
    """``{key: relative mask path}`` of ``<root>/masks`` (absent folder: no masks).

    Raises ``SplitError`` for a mask whose image is missing (a typo would silently drop a label)."""
    folder = root / "masks"
    if not folder.is_dir():
        return {}
    masks = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        key = p.relative_to(folder).with_suffix("").as_posix()
        if p.suffix.lower() != ".png":
            raise SplitError(f"{p}: masks must be PNG files (class id per pixel, 255 ignore)")
        if key not in images:
            raise SplitError(f"{p}: no image images/{key}.* for this mask")
        masks[key] = p.relative_to(root).as_posix()
    return masks


def _val_keys(root: Path, labeled: list[str], images: dict[str, str]) -> list[str]:
    """The val image keys: ``val.txt``'s, or every ``VAL_EVERY``-th masked image (see the module doc)."""
    path = root / "val.txt"
    if not path.is_file():
        if len(labeled) < 2:
            raise SplitError(f"{root / 'masks'}: {len(labeled)} masked image(s); the folder dataset needs at least "
                             "2 (one to train on, one to validate), or a val.txt")
        chosen = [k for i, k in enumerate(labeled) if i % VAL_EVERY == VAL_EVERY - 1]
        return chosen or labeled[-1:]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitError(f"{path}: cannot read ({type(exc).__name__})") from None
    keys = []
    for n, line in enumerate(lines, start=1):
        entry = line.strip().replace("\\", "/").removeprefix("images/")
        if not entry:
            continue
        key = entry.rsplit(".", 1)[0] if Path(entry).suffix.lower() in IMAGE_SUFFIXES else entry
        if key not in images:
            raise SplitError(f"{path}:{n}: {entry!r} is not an image in {root / 'images'}")
        if key not in labeled:
            raise SplitError(f"{path}:{n}: {entry!r} has no mask in {root / 'masks'}; val images need one")
        if key in keys:
            raise SplitError(f"{path}:{n}: {entry!r} is listed twice")
        keys.append(key)
    if not keys:
        raise SplitError(f"{path}: lists no image")
    return keys


def check_mask(root: Path, image_rel: str, mask_rel: str, num_classes: int) -> None:
    """Decode one mask and compare it with its image's size (read from the header only).

    Raises ``DataError`` naming the mask and the offending value (see ``datasets.read_mask``)
    or both sizes."""
    mask = read_mask(root / mask_rel, num_classes, "voc")
    try:
        with Image.open(root / image_rel) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{root / image_rel}: unreadable image ({type(exc).__name__})") from None
    if mask.shape != (h, w):
        raise DataError(f"{root / mask_rel}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                        f"{root / image_rel} size {w}x{h}")


def folder_entries(root: str | Path, part: str, num_classes: int, check: bool = True) -> list[tuple[str, str | None]]:
    """The ``part`` (labeled | unlabeled | val) list of a folder dataset, as split-file entries:
    ``[(image relative path, mask relative path or None), ...]`` in name order.

    With ``check``, every mask of the list is decoded and checked first (``check_mask``).

    Raises:
        SplitError: no ``images/`` or no image in it, two images with one stem, a mask without
            an image, a bad ``val.txt`` line, fewer than two masked images without ``val.txt``,
            no labeled image left for training, or (``part=unlabeled``) no image without a mask.
        DataError: a mask with a value outside ``0..num_classes-1`` and 255, another mode, or
            another size than its image (the file and the value are named).
    """
    root = Path(root)
    images = _images(root)
    masks = _masks(root, images)
    labeled = sorted(masks)
    val = _val_keys(root, labeled, images)
    if part == "val":
        keys = val
    elif part == "labeled":
        keys = [k for k in labeled if k not in set(val)]
        if not keys:
            raise SplitError(f"{root}: every masked image is a val image; none is left to train on")
    elif part == "unlabeled":
        keys = [k for k in sorted(images) if k not in masks]
        if not keys:
            raise SplitError(f"{root / 'images'}: every image has a mask, so there is no unlabeled image; add images "
                             "without masks or train folder/supervised")
    else:
        raise ValueError(f"part={part!r}: expected labeled, unlabeled or val")
    entries = [(images[k], masks.get(k) if part != "unlabeled" else None) for k in keys]
    if check:
        for image_rel, mask_rel in entries:
            if mask_rel is not None:
                check_mask(root, image_rel, mask_rel, num_classes)
    return entries


def class_count(root: str | Path, num_classes: int) -> int:
    """``data.num_classes`` of a folder dataset: K from ``<root>/classes.txt``.

    ``num_classes`` 0 means "read it": K is returned, or 0 when classes.txt does not exist (a
    preset listed, or a run's config read, away from its data; training then stops in
    ``require_classes``). A positive ``num_classes`` is returned when it equals K or the file is absent.

    Raises ``DataError`` for a bad classes.txt, or one whose K differs from ``num_classes``
    (naming the file and both numbers).
    """
    path = Path(root) / "classes.txt"
    if not path.exists():
        return num_classes
    k = len(read_classes(root))
    if num_classes and num_classes != k:
        raise DataError(f"{path}: lists {k} classes but data.num_classes={num_classes}; leave data.num_classes "
                        "unset (0) to take it from classes.txt")
    return k


def require_classes(cfg) -> None:
    """Before training on a folder dataset: ``data.num_classes`` is known, i.e. classes.txt was read.
    Raises ``DataError`` naming ``<data.root>/classes.txt`` when it was not."""
    if cfg.data.dataset == "folder" and cfg.data.num_classes == 0:
        read_classes(cfg.data.root)  # raises, naming the file (it was missing when the config was read)
        raise DataError(f"{Path(cfg.data.root) / 'classes.txt'}: appeared after the config was read; run again")
