"""Grid arithmetic shared by the USS feature files and the relabelling (``dhr-method.md`` §5.1)."""

from __future__ import annotations

import math


def ceil_to(x: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``x`` (ceil_p in the spec)."""
    return int(math.ceil(x / multiple) * multiple)


def feature_grid(h: int, w: int, patch: int, first_scale: float = 2.0) -> tuple[int, int]:
    """(h_f, w_f) of an exported map: the token grid of the first scale (ceil_p(int(2H)) / p)."""
    return ceil_to(int(h * first_scale), patch) // patch, ceil_to(int(w * first_scale), patch) // patch


def working_grid(canvas: int, patch: int) -> int:
    """g = ceil_p(2S) / p: 74 for S = 512 and DINO's patch 14."""
    return ceil_to(2 * canvas, patch) // patch
