"""Benchmark: one CAUSE stage-1 step at full size (B 16, K 2048, P' 100, D 768), chunked vs the release.

    python scripts/bench/modularity.py [--device cuda] [--batch 16] [--concepts 2048] [--patches 100]

The release materialises delta as a B x K x P' x P' tensor; ``dhr.ops.modularity`` finds the
maximising concept chunk by chunk and gathers once. Each variant runs forward + backward in its
own process (so peak memory is its own: CUDA allocator peak, or peak RSS on CPU); the ratios
are printed, and loss and gradient of the two are checked to agree on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from dhr_reference.modularity import modularity_loss_reference

from dhr.ops.modularity import modularity_loss

VARIANTS = {"chunked": modularity_loss, "release": modularity_loss_reference}


def inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.patches, args.dim, generator=gen).to(args.device)
    codebook = (torch.rand(args.concepts, args.dim, generator=gen) * 2 - 1).div(args.concepts)
    return x, codebook.to(args.device).requires_grad_(True)


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per forward + backward (after one warm-up) and peak MiB of this process's variant."""
    device = torch.device(args.device)
    x, codebook = inputs(args)
    fn = VARIANTS[args.variant]
    kwargs = {"chunk": args.chunk} if args.variant == "chunked" else {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.repeats + 1):
        codebook.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(x, codebook, **kwargs).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": sum(times[1:]) / args.repeats, "peak_mib": peak}


def agreement(device: str) -> float:
    """Largest gradient difference of the two variants on a small problem, relative to the largest gradient."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 96, generator=gen).to(device)
    grads = []
    for name, fn in VARIANTS.items():
        codebook = ((torch.rand(300, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1) / 300).to(device)
        codebook.requires_grad_(True)
        (fn(x, codebook, chunk=64) if name == "chunked" else fn(x, codebook)).backward()
        grads.append(codebook.grad)
    return ((grads[0] - grads[1]).abs().max() / grads[1].abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--concepts", type=int, default=2048)
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    print(f"CAUSE stage-1 step on {args.device}: B {args.batch}, K {args.concepts}, P' {args.patches}, "
          f"D {args.dim}, chunk {args.chunk}; forward + backward, mean of {args.repeats} after a warm-up")
    print(f"gradient agreement (small problem): max difference {agreement(args.device):.1e} of the largest")
    results = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, f"--variant={name}", *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})")
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:8s} {r['seconds'] * 1e3:9.1f} ms/step   peak {r['peak_mib']:8.0f} MiB"
              + ("  (process peak RSS)" if args.device == "cpu" else ""))
    if len(results) == 2:
        c, r = results["chunked"], results["release"]
        print(f"ratios release / dhr: time {r['seconds'] / c['seconds']:.2f}x, memory {r['peak_mib'] / c['peak_mib']:.2f}x")


if __name__ == "__main__":
    main()
