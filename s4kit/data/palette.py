"""Colour palettes: PASCAL VOC's and Cityscapes' official ones, and s4kit's own for digits.

The digits masks are written as VOC palette PNGs (``s4kit.data.digits``), but VOC's first
colours are unreadable as a digits legend (digit 6 grey, digits 0, 7 and 8 three dark reds),
so s4kit's figures draw digits with ``DIGITS_COLOURS``: a neutral dark-grey background and ten
clearly different hues, none of them red, the colour of wrong predictions in every figure
(``s4kit.viz.figures.ERROR_COLOUR``). Every two of these twelve colours are at least 30 apart
in CIELAB (Delta E 1976; ``tests/test_figures.py`` checks it).
"""
from __future__ import annotations

import numpy as np


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list of ``3 * n`` ints.

    Class ``i`` gets the colour whose bits are the interleaved bits of ``i`` (the VOC
    devkit's ``labelcolormap``); index 255 (void) is (224, 224, 192).
    """
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


CITYSCAPES_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


# digits: row 0 background (a neutral dark grey, visible on white paper and behind every hue),
# rows 1..10 digits 0..9: blue, orange, green, violet, brown, pink, lime, cyan, yellow, teal
DIGITS_COLOURS = [
    (60, 60, 60), (58, 111, 216), (242, 142, 43), (60, 174, 60), (123, 63, 184), (140, 90, 43),
    (240, 122, 216), (181, 211, 52), (52, 200, 224), (245, 208, 0), (19, 128, 113),
]


def palette_array(dataset: str, num_classes: int) -> np.ndarray:
    """uint8 (256, 3) lookup table: row k is the colour of class k; row 255 is void (VOC's
    (224, 224, 192)). ``digits`` gets ``DIGITS_COLOURS``, ``cityscapes`` its official 19
    colours (rows 19..254 black), every other dataset the VOC palette. ``num_classes`` is
    unused (kept for callers that pass it)."""
    pal = np.asarray(voc_palette(), np.uint8).reshape(256, 3).copy()
    if dataset == "digits":
        pal[: len(DIGITS_COLOURS)] = DIGITS_COLOURS
    if dataset == "cityscapes":
        pal[: len(CITYSCAPES_COLOURS)] = CITYSCAPES_COLOURS
        pal[len(CITYSCAPES_COLOURS) : 255] = 0
    return pal


def colorize(mask: np.ndarray, dataset: str = "pascal", num_classes: int = 21) -> np.ndarray:
    """Map an int (H, W) label map (255 = ignore) to uint8 (H, W, 3) RGB."""
    return palette_array(dataset, num_classes)[np.asarray(mask).astype(np.int64) & 255]
