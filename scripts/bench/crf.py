"""Benchmark: dense CRF images/s on VOC-sized inputs (500x375, 21 labels), 1 process vs all cores.

    python scripts/bench/crf.py [--images 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dhr.ops.crf import CRFParams, dense_crf_many  # noqa: E402


def make_inputs(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, probs = [], []
    for _ in range(n):
        image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        logits = rng.normal(0, 1, (21, 375, 500)).astype(np.float32)
        p = np.exp(logits - logits.max(0))
        images.append(image)
        probs.append((p / p.sum(0)).astype(np.float32))
    return images, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    images, probs = make_inputs(args.images)
    cores = os.cpu_count() or 1
    rates = {}
    for processes in (1, cores):
        t0 = time.perf_counter()
        out = dense_crf_many(images, probs, CRFParams.defaults(processes=processes))
        rates[processes] = args.images / (time.perf_counter() - t0)
        assert len(out) == args.images
    print(f"dense CRF, 500x375, 21 labels, 10 iterations, {args.images} images")
    print(f"1 process:    {rates[1]:6.2f} images/s")
    print(f"{cores} processes: {rates[cores]:6.2f} images/s")
    print(f"ratio: {rates[cores] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
