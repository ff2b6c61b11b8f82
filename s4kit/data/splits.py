"""Split files in the official UniMatch format (shared by U2PL, CPS and AllSpark).

Layout (docs/methods/frameworks.md §B1)::

    <splits>/<split>/labeled.txt      one "relative/image/path relative/mask/path" per line
    <splits>/<split>/unlabeled.txt
    <splits>/val.txt

Paths are relative to the dataset root. Some official files lack a trailing newline, so
entries are counted, never newlines. Unlabeled lines may carry a mask path (UniMatch's
lists do); s4kit only reads it where the dataset declares hidden ground truth (digits).
Every path must stay inside the dataset root (no absolute path, no ``..``), and an image
is listed at most once per file (none of the official PASCAL/Cityscapes lists repeats one).
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

import numpy as np

from ..errors import S4kitError


class SplitError(S4kitError, ValueError):
    """A split file is missing, empty, malformed or names files that do not exist."""


def _leaves_root(p: str) -> bool:
    """True for an absolute path (``/x``, ``\\x``, ``C:\\x``) or one with a ``..`` component."""
    return bool(re.match(r"[/\\]|[A-Za-z]:[/\\]", p)) or ".." in re.split(r"[/\\]", p)


def read_split_file(path: str | Path) -> list[tuple[str, str | None]]:
    """Read one split file (UTF-8; a leading BOM and CRLF line ends are accepted).

    Returns a list of ``(image_relpath, mask_relpath or None)``, in file order.

    Raises:
        SplitError (one line, naming the file and, where relevant, the line): the file is
            missing, a folder or unreadable; is not UTF-8 (the byte and its offset); holds
            no entry; a line has more than two fields; a path is absolute or has a ``..``
            component (entries must stay inside the dataset root); or an image is listed
            twice (the earlier line is named).
    """
    path = Path(path)
    if path.is_dir():
        raise SplitError(f"{path}: is a folder, not a split file")
    if not path.exists():
        raise SplitError(f"{path}: split file not found")
    if not path.is_file():
        raise SplitError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SplitError(f"{path}: cannot read split file ({reason})") from exc
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SplitError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    entries, seen = [], {}
    for n, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise SplitError(f"{path}:{n}: expected 'image [mask]', got {line.strip()!r}")
        for p in fields:
            if _leaves_root(p):
                raise SplitError(f"{path}:{n}: path {p!r} leaves the dataset root "
                                 "(absolute paths and '..' are not allowed)")
        key = posixpath.normpath(fields[0].replace("\\", "/"))
        if key in seen:
            raise SplitError(f"{path}:{n}: duplicate of line {seen[key]} ({fields[0]})")
        seen[key] = n
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
    """Write one entry per line, atomically (a kill leaves the old list or the new one)."""
    from ..io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(line + "\n" for line in lines))


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
    Each list is written atomically (a kill leaves the old file or the new one).

    Raises:
        SplitError: the pool file is invalid (see ``read_split_file``) or a split asks for
            more images than the pool holds.
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
