"""Seeds of the synthetic sets that lost the minor objects (bolt, gem): a controlled case of DHR's problem.

    python scripts/erased_seeds.py [--mode erased|swallowed] [--dataset SYNTH] [--data-root DIR] [--split train] [--overwrite]

* ``erased``: GT with every bolt and gem set to background (the extreme case);
* ``swallowed``: GT where each bolt or gem that touches a larger object takes that object's class,
  as seed expansion (random walk, affinity propagation) floods a small object from a large
  neighbour; minor objects with only background around them stay.

Writes {data_root}/WSS/{dataset}/{ERASED|SWALLOWED}/{split}/; train on them with
``wss=folder wss.path=<that folder>`` (in the pipeline: the seeds stage becomes external).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dhr.data.synthetic import write_erased_seeds, write_swallowed_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("erased", "swallowed"), default="erased")
    parser.add_argument("--dataset", default="SYNTH", help="the generated set's folder (SYNTH, SYNTH_QUICK, SYNTH_PAPER)")
    parser.add_argument("--data-root", default=os.environ.get("DHR_DATA", "data"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--reach", type=int, default=2, help="swallowed: px between a minor object and its neighbour")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    root = Path(args.data_root)
    out = root / "WSS" / args.dataset / args.mode.upper() / args.split
    masks = root / args.dataset / args.split / "mask"
    if args.mode == "erased":
        n = write_erased_seeds(masks, out, overwrite=args.overwrite)
        print(f"wrote {n} seed masks without bolt and gem to {out}")
        return
    n, swallowed, kept = write_swallowed_seeds(masks, out, reach=args.reach, overwrite=args.overwrite)
    print(f"wrote {n} seed masks to {out}: {swallowed} minor objects swallowed by a neighbour, {kept} kept")


if __name__ == "__main__":
    main()
