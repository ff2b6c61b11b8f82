"""Split files in the official UniMatch format (shared by U2PL, CPS and AllSpark).

Layout (reference/frameworks.md §B1)::

    <splits>/<split>/labeled.txt      one "relative/image/path relative/mask/path" per line
    <splits>/<split>/unlabeled.txt
    <splits>/val.txt

Paths are relative to the dataset root. Some official files lack a trailing newline, so
entries are counted, never newlines. Unlabeled lines may carry a mask path (UniMatch's
lists do); s4kit only reads it where the dataset declares hidden ground truth (digits).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import S4kitError


class SplitError(S4kitError, ValueError):
    """A split file is missing, empty, malformed or names files that do not exist."""


def read_split_file(path: str | Path) -> list[tuple[str, str | None]]:
    """Read one split file.

    Returns a list of ``(image_relpath, mask_relpath or None)``, in file order.

    Raises:
        SplitError: if the file is missing, holds no entry, or a line has more than two
            fields (the message names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path}: split file not found")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise SplitError(f"{path}:{n}: expected 'image [mask]', got {line!r}")
        entries.append((fields[0], fields[1] if len(fields) == 2 else None))
    if not entries:
        raise SplitError(f"{path}: split file is empty")
    return entries


def check_files_exist(root: str | Path, entries: list[tuple[str, str | None]], split_file: str | Path,
                      need_masks: bool = True) -> None:
    """Raise ``SplitError`` naming the split file and the first missing path, if any."""
    root = Path(root)
    for image, mask in entries:
        if not (root / image).is_file():
            raise SplitError(f"{split_file}: names {image!r}, which does not exist under {root}")
        if need_masks:
            if mask is None:
                raise SplitError(f"{split_file}: entry {image!r} has no mask path")
            if not (root / mask).is_file():
                raise SplitError(f"{split_file}: names {mask!r}, which does not exist under {root}")


def split_paths(splits_dir: str | Path, split: str) -> dict[str, Path]:
    """The three files of a split: ``{"labeled", "unlabeled", "val"}`` -> path."""
    d = Path(splits_dir)
    return {"labeled": d / split / "labeled.txt", "unlabeled": d / split / "unlabeled.txt", "val": d / "val.txt"}


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_split_lists(splits_dir: str | Path, train_lines: list[str], val_lines: list[str],
                      fractions: dict[str, int], seed: int = 0) -> None:
    """Write nested, seeded labeled/unlabeled lists and ``val.txt``.

    Args:
        splits_dir: output folder.
        train_lines, val_lines: ``"image mask"`` lines of the train pool and val set.
        fractions: split name -> denominator (``{"1_16": 16, "full": 1}``): the split
            labels ``ceil(len(train_lines) / denominator)`` images.
        seed: the permutation seed. Labeled sets are prefixes of one permutation, hence
            nested (1_32 ⊂ 1_16 ⊂ ...). For ``full`` the unlabeled list is the whole pool.
    """
    splits_dir = Path(splits_dir)
    order = np.random.default_rng([seed, 7]).permutation(len(train_lines))
    for name, denom in fractions.items():
        n = -(-len(train_lines) // denom)
        chosen = set(order[:n].tolist())
        labeled = [line for i, line in enumerate(train_lines) if i in chosen]
        unlabeled = [line for i, line in enumerate(train_lines) if i not in chosen] or list(train_lines)
        _write(splits_dir / name / "labeled.txt", labeled)
        _write(splits_dir / name / "unlabeled.txt", unlabeled)
    _write(splits_dir / "val.txt", val_lines)


def generate_splits(pool_file: str | Path, out_dir: str | Path, n_labeled: dict[str, int], seed: int = 0) -> None:
    """Generate seeded lists in the official format from a pool list (e.g. ``train_aug.txt``).

    ``n_labeled`` maps split name -> number of labeled images; the labeled sets are
    nested prefixes of one seeded permutation and ``unlabeled`` is the rest of the pool.
    Raises ``SplitError`` if a split asks for more images than the pool holds.
    """
    entries = read_split_file(pool_file)
    lines = [f"{i} {m}" if m else i for i, m in entries]
    order = np.random.default_rng([seed, 7]).permutation(len(lines))
    for name, n in n_labeled.items():
        if n > len(lines):
            raise SplitError(f"{pool_file}: split {name} asks for {n} labeled images, the pool has {len(lines)}")
        chosen = set(order[:n].tolist())
        _write(Path(out_dir) / name / "labeled.txt", [x for i, x in enumerate(lines) if i in chosen])
        _write(Path(out_dir) / name / "unlabeled.txt", [x for i, x in enumerate(lines) if i not in chosen])
