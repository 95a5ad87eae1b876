"""Compare benchmark results with the figures last recorded in docs/bench-figures.json (``make bench``).

    python scripts/bench/compare.py RESULT.json [RESULT.json ...] [--record] [--tolerance 0.2]

Each result file is one benchmark's ``--json`` output, named after it (``relabel.json`` from
``scripts/bench/relabel.py``). Every recorded figure (``relabel.ratio_no_crf``: the key
``ratio_no_crf`` of ``relabel.json``) is printed beside the new value with its change; a figure
that moved by more than the tolerance (20 %) either way is flagged and the exit status is 1. The
figures are ratios against a baseline measured in the same run, so they carry over between
machines better than seconds do. After a deliberate change, ``--record`` writes the new values
(with the date and commit) for the next comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[2] / "docs" / "bench-figures.json"


def load_results(paths: list[Path]) -> dict[str, dict]:
    results = {}
    for path in paths:
        if not path.is_file():
            sys.exit(f"compare: {path}: no such result file (run the benchmark with --json {path})")
        results[path.stem] = json.loads(path.read_text())
    return results


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=FIGURES.parent)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("results", nargs="*", type=Path, help="benchmark --json outputs")
    parser.add_argument("--record", action="store_true", help="store these values as the new reference figures")
    parser.add_argument("--tolerance", type=float, default=0.2, help="relative change that counts as moved (0.2 = 20 %%)")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="the recorded figures (default docs/bench-figures.json)")
    args = parser.parse_args()
    results = load_results(args.results)
    figures = json.loads(args.figures.read_text()) if args.figures.is_file() else {}
    moved = []
    print(f"{'figure':34s} {'recorded':>10s} {'now':>10s} {'change':>8s}")
    for name, recorded in sorted(figures.items()):
        bench, key = name.split(".", 1)
        if bench not in results:
            continue
        now = results[bench].get(key)
        if now is None:
            print(f"{name:34s} {recorded['value']:10.2f} {'missing':>10s}")
            moved.append(name)
            continue
        change = now / recorded["value"] - 1
        flag = "  MOVED" if abs(change) > args.tolerance else ""
        print(f"{name:34s} {recorded['value']:10.2f} {now:10.2f} {100 * change:+7.1f}%{flag}")
        if flag:
            moved.append(name)
    if args.record:
        stamp = {"date": time.strftime("%Y-%m-%d"), "commit": commit()}
        for name, recorded in figures.items():
            bench, key = name.split(".", 1)
            if bench in results and results[bench].get(key) is not None:
                figures[name] = {**recorded, "value": round(float(results[bench][key]), 2), **stamp}
        args.figures.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"recorded in {args.figures}")
        return
    if moved:
        print(f"moved by more than {100 * args.tolerance:.0f} %: {', '.join(moved)} (a regression, or a deliberate "
              "change: then re-record with --record and say why in docs/benchmarks.md)")
        sys.exit(1)
    print(f"every figure within {100 * args.tolerance:.0f} % of the recorded one")


if __name__ == "__main__":
    main()
