"""Shared entry-point behaviour: user mistakes end as one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_or_exit(fn: Callable[[Any], T], cfg: Any) -> T:
    """Call ``fn(cfg)``; a :class:`~dhr.errors.DHRError` prints ``error: ...`` and exits 2 (no traceback)."""
    from dhr.errors import DHRError

    try:
        return fn(cfg)
    except DHRError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
