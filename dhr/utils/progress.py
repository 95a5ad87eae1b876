"""Progress of loops outside a Trainer (dataset generation, feature export, CRF batches).

A tqdm bar on a terminal; when stdout is not one (Slurm, nohup, a pipe) a plain log line every
``every_seconds`` and at the end, as the training callbacks do (``dhr.callbacks.progress``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("dhr.progress")
T = TypeVar("T")


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def rate_and_eta(done: int, total: float, count: int, elapsed: float) -> str:
    """``N.N images/s, elapsed H:MM:SS[, ETA H:MM:SS]`` for ``done`` of ``total`` steps and ``count`` images."""
    rate = count / elapsed if elapsed > 0 else 0.0
    known = total != float("inf") and total > 0
    eta = f", ETA {clock(elapsed / done * (total - done))}" if known and done else ""
    return f"{rate:.1f} images/s, elapsed {clock(elapsed)}{eta}"


class Progress:
    def __init__(self, total: int, desc: str, every_seconds: float = 30.0, terminal: bool | None = None) -> None:
        self.total, self.desc, self.every_seconds = int(total), desc, float(every_seconds)
        self.done = 0
        self._start = self._last = time.perf_counter()
        self._bar: Any = None
        if sys.stdout.isatty() if terminal is None else terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="img", leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_seconds or self.done >= self.total:
            self._last = now
            log.info("%s: %d/%d, %s", self.desc, self.done, self.total,
                     rate_and_eta(self.done, self.total, self.done, now - self._start))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def track(items: Iterable[T], total: int, desc: str, terminal: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress`."""
    bar = Progress(total, desc, terminal=terminal)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
