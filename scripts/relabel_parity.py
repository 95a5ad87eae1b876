"""Parity of the batched relabelling with the literal reference of the release's arithmetic, with the CRF.

    python scripts/relabel_parity.py [--samples 20] [--canvas 512] [--seed 0] [--release] [--no-crf] [--backend torch]

Random VOC-sized samples (21 classes, K = 2..6 tagged classes, CAMs at stride 16, 90-d USS maps on
the ceil14(2S)/14 grid, C4/C5 at stride 8; two tagged classes near-identical in USS space so Step 3
forms a group in every sample; the last tagged class erased from the seeds so Step 1 restores it).
Both run Steps 1-3 with the dense CRF (pydensecrf: the reference calls it itself, with its own
de-normalisation). Prints, per sample, the share of identical pixels of the batched op against the
reference, and of the batched op under bf16 autocast against fp32. ``--release`` uses the release
switches (step1.bg_mode=official, cell_scope=all, mm_eps=0) with full-canvas crops. ``--backend torch``
runs the batched op's CRF on the PyTorch port (the reference keeps pydensecrf): the whole
relabelling with the port against the release's arithmetic.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from dhr_reference.batches import random_relabel_batch
from dhr_reference.relabel import reference_relabel

from dhr.ops import relabel as R
from dhr.ops.crf import CRFParams, CRFRunner, PassThroughCRF, pydensecrf_installed


def step3_groups(sample: dict, cfg: R.RelabelConfig) -> int:
    """How many classes of the sample fall in a Step-3 group (USS prototype correlation > tau) on its seeds."""
    g = sample["uss"].shape[-1]
    labels = R.majority_vote(sample["masks"], g, cfg.uss_patch, sample["num_classes"])
    valid = R.valid_cells(sample["boxes"], sample["masks"].shape[-1], g, cfg.cell_scope)
    protos, present = R.prototypes(sample["uss"].float(), labels, valid, sample["num_classes"])
    vn = torch.nn.functional.normalize(protos, dim=2)
    corr = torch.relu(torch.einsum("bcd,bkd->bck", vn, vn)).triu()
    groups = (corr > cfg.tau) & present[:, None, :] & present[:, :, None]
    return int((groups.sum(2) > 1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--canvas", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--release", action="store_true")
    parser.add_argument("--no-crf", action="store_true", help="replace the CRF by its input (argmax of the maps) in both")
    parser.add_argument("--only", type=int, nargs="*", help="run only these sample indices")
    parser.add_argument("--backend", default="pydensecrf", choices=["torch", "pydensecrf"],
                        help="the batched op's CRF (the reference always calls pydensecrf)")
    parser.add_argument("--device", default="cpu", help="device of the batched op")
    args = parser.parse_args()
    if not args.no_crf and not pydensecrf_installed():
        sys.exit("the reference calls pydensecrf: pip install -e '.[crf]', or run with --no-crf")
    switches = {"step1": {"bg_mode": "official"}, "cell_scope": "all", "mm_eps": 0.0} if args.release else {}
    cfg = R.RelabelConfig.defaults(**switches)
    params = CRFParams.defaults(processes=1, backend=args.backend)
    dev = torch.device(args.device)
    crf = PassThroughCRF(params) if args.no_crf else CRFRunner(params)
    ref_crf = (lambda im, p: p) if args.no_crf else None
    same_ref, same_bf16, off_ref = [], [], []
    for i in args.only if args.only else range(args.samples):
        t0 = time.perf_counter()
        s = random_relabel_batch(args.seed + i, batch=1, canvas=args.canvas, num_classes=21, k_range=(2, 6), patch=14,
                                 uss_dim=90, wss_dims=(1024, 2048), full_boxes=args.release)
        on_dev = {k: ([t.to(dev) for t in v] if isinstance(v, list) else v.to(dev) if torch.is_tensor(v) else v)
                  for k, v in s.items()}
        got = R.relabel(cfg=cfg, crf=crf, **on_dev).masks[0].cpu().numpy()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            mixed = R.relabel(cfg=cfg, crf=crf, **on_dev).masks[0].cpu().numpy()
        ref = reference_relabel(s["masks"][0].numpy(), s["cams"][0].numpy(), s["tags"][0].numpy(), s["images"][0].numpy(),
                                s["boxes"][0].tolist(), s["uss"][0].numpy(), [f[0].numpy() for f in s["wss_feats"]],
                                21, 0, cfg, params, crf=ref_crf)
        same_ref.append(float((got == ref).mean()))
        off_ref.append(int((got != ref).sum()))
        same_bf16.append(float((got == mixed).mean()))
        print(f"sample {i:2d}: K={int(s['tags'].sum())} step-3 classes {step3_groups(s, cfg)} "
              f"changed {100 * float((got != s['masks'][0].numpy()).mean()):5.1f}% | vs reference {100 * same_ref[-1]:7.3f}% "
              f"({int((got != ref).sum())} px differ) | bf16 vs fp32 {100 * same_bf16[-1]:7.3f}% "
              f"({int((got != mixed).sum())} px) ({time.perf_counter() - t0:.1f} s)", flush=True)
    ref_arr, bf_arr = np.array(same_ref), np.array(same_bf16)
    print(f"{len(same_ref)} samples, canvas {args.canvas}{' (release switches)' if args.release else ''}{' without the CRF' if args.no_crf else ''}: "
          f"identical to the reference in {int((ref_arr == 1).sum())} (pixels that differ: {sum(off_ref)} in all, "
          f"at most {max(off_ref)} in a sample of {args.canvas ** 2}; mean agreement {100 * ref_arr.mean():.5f}%); "
          f"bf16 autocast identical to fp32 in {int((bf_arr == 1).sum())}")


if __name__ == "__main__":
    main()
