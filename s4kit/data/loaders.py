"""Datasets and resumable, seeded data streams built from a config.

Training streams are infinite, seeded sequences: iteration t of stream s on rank r takes
positions (t * W + r) * B .. + B - 1 of the concatenation of per-epoch permutations
``perm(seed, s, epoch)``; each sample's augmentation seed is derived from
(seed, s, t, r, j). A run resumed at iteration t therefore sees exactly the batches an
uninterrupted run would have seen, whatever ``num_workers``.

With gradient accumulation (``train.global_batch``, A micro-batches per step) process r of
W yields, per iteration, the A batches of "virtual ranks" r * A + k (k = 0 .. A - 1) of a
world of W * A: one step sees the same images, with the same augmentation seeds, on 1 GPU
x A micro-batches as on W * A GPUs, and a resume on another GPU count keeps the data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .datasets import SegmentationDataset
from .splits import SplitError, split_paths
from .transforms import EvalTransform, TrainTransform

LABELED, UNLABELED = 0, 1


class IterationBatchSampler(torch.utils.data.Sampler):
    """Yields, for t = start .. total - 1, a list of B ``(index, sample_seed)`` pairs.

    Args:
        n: dataset length; batch_size: B per rank; seed, stream: stream identity;
        start, total: iteration range; rank, world: this process and the world size;
        accum: micro-batches per iteration (gradient accumulation): each iteration yields
            ``accum`` batches, those of ranks ``rank * accum + k`` of a world of ``world * accum``.
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream: int, start: int, total: int,
                 rank: int = 0, world: int = 1, accum: int = 1):
        self.n, self.b, self.seed, self.stream = n, batch_size, seed, stream
        self.start, self.total, self.accum = start, total, accum
        self.ranks, self.world = [rank * accum + k for k in range(accum)], world * accum
        self._epoch, self._perm = -1, None

    def _index(self, pos: int) -> int:
        epoch = pos // self.n
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)
        return int(self._perm[pos % self.n])

    def __iter__(self):
        for t in range(self.start, self.total):
            for rank in self.ranks:
                first = (t * self.world + rank) * self.b
                yield [(self._index(first + j),
                        int(np.random.SeedSequence([self.seed, self.stream, t, rank, j]).generate_state(1)[0]))
                       for j in range(self.b)]

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.accum


def train_transform(cfg) -> TrainTransform:
    """The weak view of ``cfg.data`` (crop, scale range, flip, normalisation)."""
    d = cfg.data
    return TrainTransform(d.crop_size, tuple(d.scale_range), d.flip, tuple(d.mean), tuple(d.std))


def eval_transform(cfg) -> EvalTransform:
    """Normalisation only, for evaluation."""
    return EvalTransform(tuple(cfg.data.mean), tuple(cfg.data.std))


def split_file(cfg, part: str) -> Path:
    """The ``part`` (labeled | unlabeled | val) list of ``cfg.data.split``. Raises ``SplitError``
    when it does not exist, saying how to get it: ``s4kit data digits`` for digits, the official
    lists (data/README.md) for the other datasets."""
    d = cfg.data
    path = Path(split_paths(d.splits, d.split)[part])
    if not path.exists():
        if d.dataset == "digits":
            how = f"build the dataset first: s4kit data digits --root {d.root}"
        else:
            section = {"pascal": "PASCAL VOC 2012", "cityscapes": "Cityscapes", "coco": "COCO"}.get(d.dataset, d.dataset)
            how = (f"copy UniMatch's official lists splits/{d.dataset}/ to data.splits={d.splits} "
                   f"(data/README.md, '{section}')")
        raise SplitError(f"{path}: split file not found; {how}")
    return path


def build_dataset(cfg, part: str, train: bool = True) -> SegmentationDataset:
    """``part`` in labeled | unlabeled | val; ``train`` picks the weak-view or eval transform.

    ``data.dataset=folder`` takes the lists from the folder's layout (``folder.folder_entries``,
    which checks every mask first) instead of split files.

    Unlabeled datasets keep their hidden ground truth only if ``data.hidden_gt``; ``data.resize``
    resizes every image and mask once when read (train and val alike).
    Raises ``SplitError`` / ``DataError`` (see ``SegmentationDataset``).
    """
    d = cfg.data
    entries = None
    if d.get("dataset") == "folder":  # lists from the folder's layout (data/folder.py), masks checked here
        from .folder import folder_entries

        path, entries = Path(d.root), folder_entries(d.root, part, d.num_classes)
    else:
        path = split_file(cfg, part)
    return SegmentationDataset(
        d.root, path, d.num_classes, train_transform(cfg) if train else eval_transform(cfg),
        labeled=part != "unlabeled", hidden_gt=bool(d.hidden_gt), label_format=d.label_format, cache=bool(d.cache),
        resize=None if d.resize is None else tuple(d.resize), entries=entries)


def build_train_streams(cfg, start: int = 0, rank: int = 0, world: int = 1, need_unlabeled: bool = True,
                        accum: int = 1):
    """Iterators over labeled (and unlabeled) training batches from iteration ``start``;
    ``accum`` consecutive batches per iteration (the micro-batches of gradient accumulation,
    see ``IterationBatchSampler``)."""
    streams = []
    for part, stream, bsz in (("labeled", LABELED, cfg.train.batch_labeled),
                              ("unlabeled", UNLABELED, cfg.train.batch_unlabeled)):
        if part == "unlabeled" and not need_unlabeled:
            streams.append(None)
            continue
        ds = build_dataset(cfg, part, train=True)
        sampler = IterationBatchSampler(len(ds), bsz, cfg.train.seed, stream, start, cfg.train.iters, rank, world,
                                        accum)
        loader = torch.utils.data.DataLoader(
            ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(cfg.train.seed),
            persistent_workers=False, pin_memory=torch.cuda.is_available())
        streams.append(iter(loader))
    return streams[0], streams[1]


def n_images(cfg, part: str) -> int:
    """Number of entries in the ``part`` list of the configured split (or folder dataset)."""
    from .splits import read_split_file

    if cfg.data.get("dataset") == "folder":
        from .folder import folder_entries

        return len(folder_entries(cfg.data.root, part, cfg.data.num_classes, check=False))
    return len(read_split_file(split_file(cfg, part)))


def class_names(cfg) -> list[str]:
    """The K class names of ``cfg``'s dataset (``labels.CLASS_NAMES``; a folder dataset's
    ``classes.txt`` when readable); ``"0" .. "K-1"`` when they are unknown or K differs."""
    from ..labels import CLASS_NAMES

    k = cfg.data.num_classes
    names = list(CLASS_NAMES.get(cfg.data.dataset, ()))
    if cfg.data.get("dataset") == "folder":
        from .datasets import DataError
        from .folder import read_classes

        try:
            names = read_classes(cfg.data.root)
        except DataError:
            names = []
    return names if len(names) == k else [str(i) for i in range(k)]
