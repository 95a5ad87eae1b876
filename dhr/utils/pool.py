"""The one process pool of the project: forked workers (CPU-bound CRF and PNG decoding)."""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.pool import Pool


def worker_count(processes: int | None, jobs: int) -> int:
    """``processes`` (None = all cores), never more than ``jobs`` and at least 1."""
    return max(1, min(processes or os.cpu_count() or 1, jobs))


def fork_pool(processes: int) -> Pool:
    """A pool of ``processes`` workers, forked where the platform can (no re-import, no pickled globals)."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    return ctx.Pool(processes)
