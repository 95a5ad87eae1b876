"""Benchmark: DHR relabelling per batch, batched tensors vs the literal per-cell reference.

    python scripts/bench/relabel.py [--batch 16] [--size 512] [--device cpu]

Inputs are VOC-sized (21 classes, 3-4 per crop, CAMs 32x32, USS 90-d on the 74x74 grid, C4
1024-d and C5 2048-d at stride 8, channels-last as the DHR module runs the network) with two near-identical USS classes so Step 3 runs. Both
implementations run all three steps; the dense CRF is the same library call in both, so it is
timed once on its own and the relabelling is compared without it (argmax in its place). The
end-to-end ratio with the CRF (serial, and in a pool of all cores for the batched code) is
printed as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dhr.ops import relabel as R  # noqa: E402
from dhr.ops.crf import CRFParams, CRFRunner, PassThroughCRF  # noqa: E402
from dhr.reference.batches import blank_outside_boxes  # noqa: E402
from dhr.reference.relabel import reference_relabel  # noqa: E402


def make_batch(b: int, s: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    num_classes = 21
    truth = torch.zeros(b, s, s, dtype=torch.long)
    for i in range(b):
        classes = torch.randperm(20, generator=g)[:3] + 1
        if i % 2 == 0:
            classes[1] = 2  # classes 1 and 2 are near-identical in USS space: Step 3 runs
            classes[0] = 1
        for cls in classes.tolist():
            y, x = torch.randint(0, s // 2, (2,), generator=g).tolist()
            hh, ww = torch.randint(s // 8, s // 2, (2,), generator=g).tolist()
            truth[i, y : y + hh, x : x + ww] = cls
    masks = truth.clone()
    masks[torch.rand(b, s, s, generator=g) < 0.05] = 255
    boxes = torch.tensor([[0, 0, s, s] if i % 3 else [s // 8, 0, s - s // 8, s] for i in range(b)])
    images = torch.randn(b, 3, s, s, generator=g) * 0.5
    blank_outside_boxes(masks, images, boxes)
    grid = R.working_grid(s, 14)
    base = torch.randn(num_classes, 90, generator=g)
    base[2] = base[1] + 0.05 * torch.randn(90, generator=g)
    small = F.interpolate(truth[:, None].float(), size=(grid, grid), mode="nearest")[:, 0].long()
    uss = base[small].permute(0, 3, 1, 2) + 0.5 * torch.randn(b, 90, grid, grid, generator=g)
    tags = torch.zeros(b, num_classes - 1)
    for i in range(b):
        for cls in torch.unique(truth[i]).tolist():
            if cls:
                tags[i, cls - 1] = 1
    c4, c5 = (torch.randn(b, d, s // 8, s // 8, generator=g).contiguous(memory_format=torch.channels_last) for d in (1024, 2048))
    return dict(masks=masks, cams=torch.randn(b, 20, s // 16, s // 16, generator=g), tags=tags, images=images,
                boxes=boxes, uss=uss, wss_feats=[c4, c5],
                num_classes=num_classes, background_id=0)


def run_reference(batch: dict, cfg: R.RelabelConfig, params: CRFParams, crf) -> None:
    for i in range(len(batch["masks"])):
        reference_relabel(batch["masks"][i].numpy(), batch["cams"][i].numpy(), batch["tags"][i].numpy(),
                          batch["images"][i].numpy(), batch["boxes"][i].tolist(), batch["uss"][i].numpy(),
                          [f[i].contiguous().numpy() for f in batch["wss_feats"]], batch["num_classes"], 0, cfg,
                          params, crf=crf)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    batch = make_batch(args.batch, args.size)
    cfg = R.RelabelConfig.defaults()
    params = CRFParams.defaults()
    dev = torch.device(args.device)
    on_dev = {k: ([t.to(dev) for t in v] if isinstance(v, list) else v.to(dev) if torch.is_tensor(v) else v)
              for k, v in batch.items()}

    def batched(crf) -> None:
        R.relabel(cfg=cfg, crf=crf, **on_dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    no_crf = PassThroughCRF(params)
    batched(no_crf)  # warm-up
    fast = best_of(lambda: batched(no_crf), args.repeats)
    slow = best_of(lambda: run_reference(batch, cfg, params, lambda im, p: p), 1)
    print(f"relabelling without CRF, {args.batch} crops of {args.size}: reference {slow:.2f} s/batch, "
          f"batched ({args.device}) {fast:.3f} s/batch, ratio {slow / fast:.1f}x")
    cores = os.cpu_count() or 1
    with CRFRunner(CRFParams.defaults(processes=cores)) as pool:
        pooled = best_of(lambda: batched(pool), 1)
    serial = best_of(lambda: batched(CRFRunner(CRFParams.defaults(processes=1))), 1)
    slow_crf = slow + (serial - fast)  # the reference calls the same CRF serially
    print(f"with the dense CRF: reference {slow_crf:.2f} s/batch, batched + serial CRF {serial:.2f} s/batch, "
          f"batched + CRF pool of {cores} {pooled:.2f} s/batch, ratio {slow_crf / pooled:.1f}x")


if __name__ == "__main__":
    main()
