"""Palettes of label PNGs exactly as ``evaluation.md`` §7 defines them."""

from __future__ import annotations

import numpy as np

IGNORE_COLOUR = (224, 224, 192)

# The standard ADE20K 150-class palette (class 0 = wall), as used by mmsegmentation.
_ADE150 = (
    "120,120,120 180,120,120 6,230,230 80,50,50 4,200,3 120,120,80 140,140,140 204,5,255 "
    "230,230,230 4,250,7 224,5,255 235,255,7 150,5,61 120,120,70 8,255,51 255,6,82 "
    "143,255,140 204,255,4 255,51,7 204,70,3 0,102,200 61,230,250 255,6,51 11,102,255 "
    "255,7,71 255,9,224 9,7,230 220,220,220 255,9,92 112,9,255 8,255,214 7,255,224 "
    "255,184,6 10,255,71 255,41,10 7,255,255 224,255,8 102,8,255 255,61,6 255,194,7 "
    "255,122,8 0,255,20 255,8,41 255,5,153 6,51,255 235,12,255 160,150,20 0,163,255 "
    "140,140,140 250,10,15 20,255,0 31,255,0 255,31,0 255,224,0 153,255,0 0,0,255 "
    "255,71,0 0,235,255 0,173,255 31,0,255 11,200,200 255,82,0 0,255,245 0,61,255 "
    "0,255,112 0,255,133 255,0,0 255,163,0 255,102,0 194,255,0 0,143,255 51,255,0 "
    "0,82,255 0,255,41 0,255,173 10,0,255 173,255,0 0,255,153 255,92,0 255,0,255 "
    "255,0,245 255,0,102 255,173,0 255,0,20 255,184,184 0,31,255 0,255,61 0,71,255 "
    "255,0,204 0,255,194 0,255,82 0,10,255 0,112,255 51,0,255 0,194,255 0,122,255 "
    "0,255,163 255,153,0 0,255,10 255,112,0 143,255,0 82,0,255 163,255,0 255,235,0 "
    "8,184,170 133,0,255 0,255,92 184,0,255 255,0,31 0,184,255 0,214,255 255,0,112 "
    "92,255,0 0,224,255 112,224,255 70,184,160 163,0,255 153,0,255 71,255,0 255,0,163 "
    "255,204,0 255,0,143 0,255,235 133,255,0 255,0,235 245,0,255 255,0,122 255,245,0 "
    "10,190,212 214,255,0 0,204,255 20,0,255 255,255,0 0,153,255 0,41,255 0,255,204 "
    "41,0,255 41,255,0 173,0,255 0,245,255 71,0,255 122,0,255 0,255,184 0,92,255 "
    "184,255,0 0,133,255 255,214,0 25,194,194 102,255,0 92,0,255"
)

PALETTE_KINDS = ("voc", "shifted", "ade")


def bit_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC bit colour map: (n, 3) uint8."""
    index = np.arange(n)
    colours = np.zeros((n, 3), dtype=np.int64)
    c = index.copy()
    for j in range(8):
        for channel in range(3):
            colours[:, channel] |= ((c >> channel) & 1) << (7 - j)
        c >>= 3
    return colours.astype(np.uint8)


def ade150_colours() -> np.ndarray:
    """The 150 ADE20K colours, (150, 3) uint8."""
    return np.array([[int(v) for v in t.split(",")] for t in _ADE150.split()], dtype=np.uint8)


def make_palette(kind: str, num_classes: int) -> np.ndarray:
    """A 256-entry palette (256, 3) uint8 for a dataset of ``num_classes`` classes.

    ``voc`` (VOC2012, COCO2014, synthetic): bit colour map of i; ``shifted`` (COCO-Stuff,
    PascalContext): bit colour map of i + 1, and entry C holds bit colour map C; ``ade``: the
    ADE20K palette. Entries above C - 1 are black, entry 255 is the ignore colour.
    """
    if kind not in PALETTE_KINDS:
        from dhr.errors import DHRError

        raise DHRError(f"unknown palette kind {kind!r}: use one of {PALETTE_KINDS} (dataset.palette)")
    palette = np.zeros((256, 3), dtype=np.uint8)
    bits = bit_colormap(257)
    if kind == "voc":
        palette[:num_classes] = bits[:num_classes]
    elif kind == "shifted":
        palette[:num_classes] = bits[1 : num_classes + 1]
        if num_classes < 255:
            palette[num_classes] = bits[num_classes]
    else:
        ade = ade150_colours()
        n = min(num_classes, len(ade))
        palette[:n] = ade[:n]
    palette[255] = IGNORE_COLOUR
    return palette
