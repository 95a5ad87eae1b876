"""Make the "minor objects erased" seeds of the synthetic set: GT with bolt and gem set to background.

    python scripts/erased_seeds.py [--data-root DIR] [--split train] [--overwrite]

Writes {data_root}/WSS/SYNTH/ERASED/{split}/; train DHR on them with
``python -m dhr.train experiment=synthetic_dhr wss=folder wss.path=<that folder>``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dhr.data.synthetic import write_erased_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("DHR_DATA", "data"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    root = Path(args.data_root)
    out = root / "WSS" / "SYNTH" / "ERASED" / args.split
    n = write_erased_seeds(root / "SYNTH" / args.split / "mask", out, overwrite=args.overwrite)
    print(f"wrote {n} seed masks without bolt and gem to {out}")


if __name__ == "__main__":
    main()
