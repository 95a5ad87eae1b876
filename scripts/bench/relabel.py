"""Benchmark: DHR relabelling per batch, batched tensors vs the literal per-cell reference, and the
dense CRF inside it on each backend.

    python scripts/bench/relabel.py [--batch 16] [--size 512] [--device cpu|cuda] [--network] [--crf | --no-crf]
                                    [--json PATH]

Inputs are VOC-sized (21 classes, 3-4 per crop, CAMs 32x32, USS 90-d on the 74x74 grid, C4
1024-d and C5 2048-d at stride 8, channels-last as the DHR module runs the network) with two
near-identical USS classes so Step 3 runs. Both implementations run all three steps; the dense
CRF is timed apart (argmax in its place) and then inside the batched relabelling on each backend:
pydensecrf serial and in a pool of all cores, and the torch backend on ``--device``.
``--network`` also times one forward + backward of the DHR network (DeepLabv3+ ResNet-101) on the
same batch: the relabelling should cost no more than that. ``--no-crf`` times the relabelling without the
CRF alone (a minute on 2 CPU cores instead of five); ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from dhr_reference.batches import blank_outside_boxes
from dhr_reference.relabel import reference_relabel

from dhr.ops import relabel as R
from dhr.ops.crf import CRFParams, CRFRunner, PassThroughCRF, pydensecrf_installed


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


def network_step(batch: int, size: int, dev: torch.device) -> float:
    """Seconds for one forward + backward of the DHR network (fp32, random weights) on ``batch`` crops."""
    from hydra.utils import instantiate

    from dhr.utils.cli import compose_config

    cfg = compose_config("train", ["model=dhr", "dataset=voc", "backbone=resnet101"])
    module = instantiate(cfg.model).to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)

    def step() -> None:
        out = module.forward_train(x)
        sum(v.float().mean() for v in out.values()).backward()
        sync(dev)

    step()  # warm-up
    return best_of(step, 2)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--network", action="store_true", help="also time the network's forward + backward")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the relabelling with the dense CRF on each backend (default: yes)")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args()
    batch = make_batch(args.batch, args.size)
    cfg = R.RelabelConfig.defaults()
    params = CRFParams.defaults()
    dev = torch.device(args.device)
    on_dev = {k: ([t.to(dev) for t in v] if isinstance(v, list) else v.to(dev) if torch.is_tensor(v) else v)
              for k, v in batch.items()}

    def batched(crf) -> None:
        R.relabel(cfg=cfg, crf=crf, **on_dev)
        sync(dev)

    no_crf = PassThroughCRF(params)
    batched(no_crf)  # warm-up
    fast = best_of(lambda: batched(no_crf), args.repeats)
    slow = best_of(lambda: run_reference(batch, cfg, params, lambda im, p: p), 1)
    numbers: dict[str, float | str] = {"device": args.device, "batch": args.batch, "size": args.size,
                                       "reference_no_crf_s": slow, "batched_no_crf_s": fast, "ratio_no_crf": slow / fast}
    print(f"relabelling without CRF, {args.batch} crops of {args.size}: reference {slow:.2f} s/batch, "
          f"batched ({args.device}) {fast:.3f} s/batch, ratio {slow / fast:.1f}x")
    if args.crf:
        torch_crf = CRFRunner(CRFParams.defaults(backend="torch"))
        batched(torch_crf)  # warm-up: the Gaussian lattice of each crop size is built once
        with_torch = best_of(lambda: batched(torch_crf), args.repeats)
        numbers["with_torch_crf_s"] = with_torch
        line = f"with the dense CRF: batched + torch CRF ({args.device}) {with_torch:.2f} s/batch"
        if pydensecrf_installed():
            cores = os.cpu_count() or 1
            with CRFRunner(CRFParams.defaults(backend="pydensecrf", processes=cores)) as pool:
                pooled = best_of(lambda: batched(pool), 1)
            serial = best_of(lambda: batched(CRFRunner(CRFParams.defaults(backend="pydensecrf", processes=1))), 1)
            slow_crf = slow + (serial - fast)  # the reference calls the same CRF serially
            numbers.update(with_pydensecrf_serial_s=serial, with_pydensecrf_pool_s=pooled, reference_with_crf_s=slow_crf,
                           ratio_pool_over_torch=pooled / with_torch, ratio_reference_over_torch=slow_crf / with_torch)
            line += (f", batched + pydensecrf serial {serial:.2f} s/batch, batched + pydensecrf pool of {cores} "
                     f"{pooled:.2f} s/batch, reference {slow_crf:.2f} s/batch; ratios: pydensecrf pool / torch "
                     f"{pooled / with_torch:.2f}x, reference / torch {slow_crf / with_torch:.1f}x")
        else:
            line += " (pydensecrf is not installed: no comparison)"
        print(line)
    if args.network:
        net = network_step(args.batch, args.size, dev)
        numbers["network_s"] = net
        line = f"network forward + backward (DeepLabv3+ ResNet-101, fp32, {args.device}): {net:.2f} s/batch"
        if "with_torch_crf_s" in numbers:
            numbers["with_torch_crf_over_network"] = float(numbers["with_torch_crf_s"]) / net
            line += f"; relabel step with the torch CRF / network step: {numbers['with_torch_crf_over_network']:.2f}x"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
