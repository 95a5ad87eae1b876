"""Benchmark: the dense CRF's backends, agreement with pydensecrf and images/s.

    python scripts/bench/crf.py [--backend torch pydensecrf] [--device cpu|cuda] [--per-image 4] [--crops 16]
                                [--chunk auto 1 4 16] [--data DIR] [--json PATH]

Agreement: real photographs of ../shared/data (VOC val, VOC val_crop513, COCO128), random crops
of 128-512 px with random CAM-like unaries of 2-21 labels (``reference/dhr_reference/crf_cases.py``); the
torch backend on ``--device`` against pydensecrf, per case and as mean and worst share of pixels
with the same argmax, and the largest |dQ|. Speed: ``--crops`` crops of ``--size`` with ``--labels``
labels cut from those photographs; pydensecrf serially and in a pool of all cores, the torch backend
in one batched call (warm: the Gaussian lattice of the size is built on the first call), with
ratios against pydensecrf serial measured in the same run. Where the photographs are not at hand
(``--data``, default ``../shared/data``; a GPU machine gets the checkout alone), images of the
synthetic set stand in and the output says so. ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from dhr_reference.crf_cases import agreement_cases, argmax_agreement, random_crop, random_unaries
from PIL import Image

from dhr.ops.crf import CRFParams, CRFRunner, pydensecrf_installed

ROOT = Path(__file__).resolve().parents[2]

DATA = ROOT.parent / "shared" / "data"
FOLDERS = ("voc2012_sample/val", "voc2012_sample/val_crop513", "coco128_seg/train2017")


def photographs(data: Path, per_folder: int) -> list[Path]:
    """The photographs of ``data``; without them, images of the synthetic set (generated into a temporary folder)."""
    paths = [p for folder in FOLDERS for p in sorted((data / folder / "image").glob("*.jpg"))[:per_folder]]
    if paths:
        return paths
    import tempfile

    from dhr.data.synthetic import generate

    root = Path(tempfile.mkdtemp(prefix="crf-bench-"))
    generate(root, "SYNTH", progress=False, num_train=per_folder * len(FOLDERS), num_val=1, min_size=512, max_size=640,
             seed=0)
    print(f"no photographs under {data}: images of the synthetic set stand in (generated in {root})")
    return sorted((root / "SYNTH" / "train" / "image").glob("*.jpg"))


def agreement(paths: list[Path], per_image: int, device: torch.device) -> None:
    torch_crf = CRFRunner(CRFParams.defaults(backend="torch"))
    reference = CRFRunner(CRFParams.defaults(backend="pydensecrf", processes=1))
    shares, worst_dq, differ, pixels = [], 0.0, 0, 0
    for name, image, probs in agreement_cases(paths, per_image):
        image = torch.from_numpy(image.copy())
        ours = torch_crf([image.to(device)], [torch.from_numpy(probs).to(device)])[0].cpu().numpy()
        theirs = reference([image], [torch.from_numpy(probs)])[0].numpy()
        shares.append(argmax_agreement(ours, theirs))
        worst_dq = max(worst_dq, float(np.abs(ours - theirs).max()))
        off = int((ours.argmax(0) != theirs.argmax(0)).sum())
        differ, pixels = differ + off, pixels + ours[0].size
        print(f"  {name:40s} same argmax {100 * shares[-1]:8.4f} % ({off} px differ)   "
              f"max |dQ| {np.abs(ours - theirs).max():.2e}")
    print(f"agreement over {len(shares)} cases: mean {100 * np.mean(shares):.4f} %, worst {100 * min(shares):.4f} %, "
          f"{differ} of {pixels} pixels differ, max |dQ| {worst_dq:.2e}")


def timed(fn, device: torch.device, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def speed(paths: list[Path], crops: int, size: int, labels: int, backends: list[str], device: torch.device,
          chunks: list[int | str]) -> dict[str, float]:
    rng = np.random.default_rng(0)
    images, probs = [], []
    for i in range(crops):
        photo = np.asarray(Image.open(paths[i % len(paths)]).convert("RGB"))
        if min(photo.shape[:2]) < size:
            photo = np.pad(photo, ((0, max(0, size - photo.shape[0])), (0, max(0, size - photo.shape[1])), (0, 0)),
                           mode="reflect")
        crop = random_crop(photo, size, rng)
        images.append(torch.from_numpy(crop))
        probs.append(torch.from_numpy(random_unaries(rng, labels, size, size)))
    print(f"speed: {crops} crops of {size}x{size}, {labels} labels, 10 iterations")
    rates: dict[str, float] = {}
    seconds_of: dict[str, float] = {}
    if "pydensecrf" in backends:
        cores = os.cpu_count() or 1
        one = CRFRunner(CRFParams.defaults(backend="pydensecrf", processes=1))
        rates["pydensecrf, 1 process"] = crops / timed(lambda: one(images, probs), torch.device("cpu"), 1)
        with CRFRunner(CRFParams.defaults(backend="pydensecrf", processes=cores)) as pool:
            rates[f"pydensecrf, pool of {cores}"] = crops / timed(lambda: pool(images, probs), torch.device("cpu"), 1)
    if "torch" in backends:
        on_dev = [im.to(device) for im in images], [p.to(device) for p in probs]
        for chunk in chunks:  # auto: 16 on a GPU, 1 on the CPU
            runner = CRFRunner(CRFParams.defaults(backend="torch", chunk=chunk))
            runner(*on_dev)  # warm-up
            seconds = timed(lambda: runner(*on_dev), device)  # noqa: B023 - timed now, in this iteration
            rates[f"torch on {device}, chunk {runner.params.chunk_for(device)}"] = crops / seconds
            seconds_of.setdefault("torch_seconds", seconds)  # the first chunk setting (auto by default)
            print(f"  torch, chunk {runner.params.chunk_for(device)}: {seconds:.3f} s for the {crops} crops")
    base = rates.get("pydensecrf, 1 process")
    for name, rate in rates.items():
        ratio = f"   {rate / base:6.2f}x pydensecrf serial" if base else ""
        print(f"  {name:32s} {rate:8.2f} images/s{ratio}")
    return {**seconds_of, "images_per_s": rates, **({"torch_over_pydensecrf_serial": max(
        r for k, r in rates.items() if k.startswith("torch")) / base} if base and "torch" in backends else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["torch", "pydensecrf"], choices=["torch", "pydensecrf"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=3, help="photographs per folder")
    parser.add_argument("--per-image", type=int, default=4, help="agreement cases per photograph")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--chunk", nargs="+", default=["auto"], help="torch backend: crops per call (auto, or numbers)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared photographs (default ../shared/data)")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = list(args.backend)
    if "pydensecrf" in backends and not pydensecrf_installed():
        print("pydensecrf is not installed (pip install -e '.[crf]'): timing the torch backend alone")
        backends.remove("pydensecrf")
    paths = photographs(args.data, args.images)
    if "pydensecrf" in backends and "torch" in backends and args.per_image > 0:
        agreement(paths, args.per_image, device)
    chunks = [c if c == "auto" else int(c) for c in args.chunk]
    numbers = speed(paths, args.crops, args.size, args.labels, backends, device, chunks)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "crops": args.crops, "size": args.size,
                                         "labels": args.labels, **numbers}, indent=2) + "\n")


if __name__ == "__main__":
    main()
