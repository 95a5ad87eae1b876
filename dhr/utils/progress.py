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
            elapsed = now - self._start
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            log.info("%s: %d/%d, %.1f/s, elapsed %.0f s, ETA %.0f s", self.desc, self.done, self.total,
                     self.done / elapsed if elapsed > 0 else 0.0, elapsed, eta)

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
