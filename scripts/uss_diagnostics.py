"""Where does CAUSE lose against k-means? Score each stage's clustering against GT.

    python scripts/uss_diagnostics.py ckpt=<cause run>/checkpoints/probe/last.ckpt [over=64] \
        [hydra overrides of the training run, e.g. experiment=synthetic_cause backbone.weights=...]

On the validation split it prints, for the frozen backbone tokens and for the trained stages:

* **purity** of a partition with many clusters: map each cluster to its majority class and
  score the mIoU. It measures how much class information a partition keeps, independent of
  how the classes are grouped. Compared: the stage-1 concepts (argmax over the clusterbook)
  against k-means with the same number of clusters on the tokens, and k-means with ``over``
  clusters on the tokens against the same on the teacher-head features.
* **Hungarian-matched mIoU** with as many clusters as classes: k-means on the tokens, k-means
  on the teacher features, and the trained cluster probe (what ``model=cause`` reports).
* **family merges** of the same clusterings, for a dataset with ``families`` (classes of one
  colour on the synthetic set): the share of families whose classes share a cluster, of pairs of
  families that do, and of families owning a cluster of their own (DINO on real images: high,
  low, high).

A diagnostic only: GT is never used for training.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from dhr.conf_path import CONFIG_DIR
from dhr.ops.hungarian import family_merges, hungarian_scores
from dhr.ops.kmeans import spherical_kmeans
from dhr.utils.checkpoint import model_weights, read_checkpoint

ARGS = ("ckpt", "over")


def class_cluster_counts(maps: list[torch.Tensor], labels: list[torch.Tensor], centroids: torch.Tensor, n: int) -> np.ndarray:
    """(n classes, k clusters) pixel counts of cosine assignments upsampled to the label size.

    Rectangular (k may exceed n), unlike ``dhr.ops.hungarian.cluster_histogram``.
    """
    k = len(centroids)
    hist = torch.zeros(n, k, dtype=torch.long)
    c = F.normalize(centroids.float(), dim=1)
    for m, label in zip(maps, labels, strict=True):
        cos = torch.einsum("bdhw,kd->bkhw", F.normalize(m.float(), dim=1), c)
        pred = F.interpolate(cos, size=label.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
        valid = (label >= 0) & (label < n)
        hist += torch.bincount(label[valid] * k + pred[valid], minlength=n * k).view(n, k)
    return hist.numpy()


def purity_miou(hist: np.ndarray) -> float:
    """mIoU after mapping every cluster to its majority class."""
    n = hist.shape[0]
    conf = np.zeros((n, n))
    for j, cls in enumerate(hist.argmax(0)):
        conf[:, cls] += hist[:, j]
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    return float(100 * np.mean(inter[union > 0] / union[union > 0]))


def kmeans_on(maps: list[torch.Tensor], k: int, seed: int = 0, max_tokens: int = 200_000) -> torch.Tensor:
    flat = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps])
    keep = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:max_tokens]
    return spherical_kmeans(flat[keep], k, seed=seed)


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:] if a.split("=", 1)[0] in ARGS)
    overrides = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in ARGS]
    if "ckpt" not in args:
        sys.exit("usage: uss_diagnostics.py ckpt=<cause run>/checkpoints/probe/last.ckpt [over=64] [overrides]")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=synthetic_cause", *overrides])
    module = instantiate(cfg.model)
    state = read_checkpoint(args["ckpt"])
    module.load_state_dict(model_weights(state, args["ckpt"], prefer_ema=False))  # strict: another config fails here
    module.eval()
    over = int(args.get("over", 64))
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    n = module.hparams.num_classes
    classes = list(cfg.dataset.classes)
    tokens, feats, labels = [], [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            t = module.tokens(batch["image"])
            tokens.append(t)
            feats.append(module.teacher_features(t, dropout=False))
            labels.append(batch["label"])
    k = module.hparams.num_concepts
    print(f"purity (majority-mapped mIoU) on {datamodule.info.name} validation:")
    print(f"  stage-1 concepts ({k}):            {purity_miou(class_cluster_counts(tokens, labels, module.codebook.detach(), n)):5.1f}")
    print(f"  k-means {k} on tokens:              {purity_miou(class_cluster_counts(tokens, labels, kmeans_on(tokens, k), n)):5.1f}")
    print(f"  k-means {over} on tokens:               {purity_miou(class_cluster_counts(tokens, labels, kmeans_on(tokens, over), n)):5.1f}")
    print(f"  k-means {over} on teacher features:     {purity_miou(class_cluster_counts(feats, labels, kmeans_on(feats, over), n)):5.1f}")
    print(f"Hungarian-matched mIoU / pAcc, {n} clusters:")
    for name, maps, centroids in (("k-means on tokens", tokens, kmeans_on(tokens, n)),
                                  ("k-means on teacher features", feats, kmeans_on(feats, n)),
                                  ("cluster probe (CAUSE)", feats, module.cluster_probe.detach())):
        counts = class_cluster_counts(maps, labels, centroids, n)
        s = hungarian_scores(counts.T)
        line = f"  {name:30s} {s.miou:5.1f} / {s.pixel_accuracy:5.1f}"
        families = [[classes.index(c) for c in fam] for fam in cfg.dataset.get("families") or []]
        if families:
            f = family_merges(counts, families)
            line += f"   families: within {f.within:.2f}, across {f.across:.2f}, apart {f.families_apart:.2f}"
        print(line)


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(print(__doc__))
    main()
