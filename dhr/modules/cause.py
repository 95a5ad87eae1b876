"""CAUSE as one LightningModule with three stages (``cause-method.md`` §§5-8).

``stage=clusterbook`` learns the concept codebook by modularity; ``stage=head`` trains the
segment head (student) with the EMA teacher, concept-wise contrastive loss and memory bank;
``stage=probe`` trains the cluster probe by modularity (and the monitoring linear probe) on
**detached** teacher features (the release's label leak is fixed; ``stage3_leak`` restores it).
The frozen ViT is not part of the state dict, so checkpoints hold only what is trained.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dhr.errors import DHRError
from dhr.models.cause_heads import SegmentMLP, SegmentTR
from dhr.models.frozen import frozen_from_cfg
from dhr.modules.base import DHRLightningModule
from dhr.ops.argmax import argmax
from dhr.ops.contrastive import ConceptBank, concept_contrastive_loss
from dhr.ops.hungarian import hungarian_scores
from dhr.ops.metrics import scores_from_confusion
from dhr.ops.modularity import grid_sample_indices, modularity_loss

STAGES = ("clusterbook", "head", "probe")


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) maps at flat positions idx (B, P') → (B, P', C)."""
    flat = x.flatten(2)
    return torch.gather(flat, 2, idx.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)


class CauseModule(DHRLightningModule):
    def __init__(
        self,
        *,
        backbone: dict[str, Any],
        num_classes: int,
        stage: str,
        head_type: str,
        num_concepts: int,
        reduced_dim: int,
        projection_dim: int,
        ffn_dim: int,
        resolution: int,
        grid_k: int,
        tau_modularity: float,
        tau_nce: float,
        pos_thresh: float,
        neg_thresh: float,
        ema_decay: float,
        bank_length: int,
        lr: float,
        lr_scale: float,
        weight_decay: float,
        grad_clip: float | None,
        teacher_dropout: bool,
        stage3_leak: bool,
        modularity_chunk: int,
        eval_crf: bool,
        report_kmeans_seeds: int,
        crf: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if stage not in STAGES:
            raise DHRError(f"model.stage={stage!r}: use one of {STAGES}")
        if not isinstance(report_kmeans_seeds, int) or report_kmeans_seeds < 1:
            raise DHRError(f"model.report_kmeans_seeds={report_kmeans_seeds!r}: set a whole number of at least 1 "
                           "(the k-means baseline's seed count)")
        object.__setattr__(self, "backbone", frozen_from_cfg(backbone))  # not a registered child
        if eval_crf:
            if crf is None:
                raise DHRError("model.eval_crf=true needs the crf node (model.crf: ${crf}); or set model.eval_crf=false")
            self.init_crf(crf)
        dim, patch = self.backbone.embed_dim, self.backbone.patch_size
        k = num_concepts
        self.codebook = nn.Parameter(torch.empty(k, dim).uniform_(-1 / k, 1 / k))
        if head_type == "tr":
            self.head: nn.Module = SegmentTR(dim=dim, num_queries=(resolution // patch) ** 2, reduced_dim=reduced_dim,
                                             ffn_dim=ffn_dim, num_concepts=k)
        elif head_type == "mlp":
            self.head = SegmentMLP(dim=dim, reduced_dim=reduced_dim)
        else:
            raise DHRError(f"model.head_type={head_type!r}: use tr or mlp")
        self.projection = nn.Conv2d(reduced_dim, projection_dim, 1)
        self.head_ema = copy.deepcopy(self.head).requires_grad_(False)
        self.projection_ema = copy.deepcopy(self.projection).requires_grad_(False)
        self.linear_probe = nn.Conv2d(reduced_dim, num_classes, 1)
        self.cluster_probe = nn.Parameter(torch.empty(num_classes, reduced_dim).uniform_(-1 / num_classes, 1 / num_classes))
        self.bank: ConceptBank | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hist: torch.Tensor | None = None
        self._linear_conf: torch.Tensor | None = None
        self.set_stage(stage)

    # -- stages ---------------------------------------------------------------------------------
    def set_stage(self, stage: str) -> None:
        """Freeze everything but what ``stage`` trains."""
        if stage not in STAGES:
            raise DHRError(f"model.stage={stage!r}: use one of {STAGES}")
        self.stage = stage
        self.hparams.stage = stage
        trainable = {
            "clusterbook": [self.codebook],
            "head": [*self.head.parameters(), *self.projection.parameters(), *self.linear_probe.parameters()],
            "probe": [self.cluster_probe, *self.linear_probe.parameters()]
            + ([*self.head_ema.parameters()] if self.hparams.stage3_leak else []),
        }[stage]
        ids = {id(p) for p in trainable}
        for p in self.parameters():
            p.requires_grad_(id(p) in ids)

    def _sync_codebook(self) -> None:
        if isinstance(self.head, SegmentTR):
            for head in (self.head, self.head_ema):
                head.codebook.copy_(self.codebook.detach())

    def tokens(self, image: torch.Tensor) -> torch.Tensor:
        if next(self.backbone.parameters()).device != image.device:
            self.backbone.to(image.device)
        return self.backbone(image)

    def teacher_features(self, tokens: torch.Tensor, *, dropout: bool) -> torch.Tensor:
        self._sync_codebook()
        self.head_ema.train(dropout)
        return self.head_ema(tokens)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        t = self.tokens(batch["image"])
        b, _, h, w = t.shape
        idx = grid_sample_indices(h, w, self.hparams.grid_k, b, device=t.device)
        if idx.shape[1] < 2:
            raise DHRError(f"grid sampling k={self.hparams.grid_k} leaves {idx.shape[1]} patch per image on a {h}x{w} "
                           "token grid: raise model.resolution or lower model.grid_k")
        logs: dict[str, torch.Tensor] = {}
        if self.stage == "clusterbook":
            loss = modularity_loss(gather_tokens(t, idx), self.codebook, tau=self.hparams.tau_modularity,
                                   chunk=self.hparams.modularity_chunk)
            logs["train/modularity"] = -loss
        elif self.stage == "head":
            loss = self._head_step(t, idx, batch, logs)
        else:
            loss = self._probe_step(t, idx, batch, logs)
        if not torch.isfinite(loss):
            raise DHRError(f"CAUSE {self.stage} loss is {loss.item()} at step {self.global_step}: lower model.lr_scale")
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for name, value in logs.items():
            self.log(name, value, batch_size=b)
        return loss

    def _linear_loss(self, feats: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor | None:
        if "label" not in batch:
            return None
        label = batch["label"]
        logits = F.interpolate(self.linear_probe(feats), size=label.shape[-2:], mode="bilinear", align_corners=False)
        target = label.masked_fill((label < 0) | (label >= self.hparams.num_classes), -100)
        if (target >= 0).sum() == 0:
            return None
        return F.cross_entropy(logits, target, ignore_index=-100)

    def _head_step(self, t: torch.Tensor, idx: torch.Tensor, batch: dict[str, Any], logs: dict) -> torch.Tensor:
        self._sync_codebook()
        with torch.no_grad():
            s_t = self.teacher_features(t, dropout=self.hparams.teacher_dropout)
            z_t = self.projection_ema(s_t)
        z = self.projection(self.head(t))
        t_s, z_s, zt_s = gather_tokens(t, idx), gather_tokens(z, idx), gather_tokens(z_t, idx)
        concepts = (F.normalize(t_s, dim=-1) @ F.normalize(self.codebook.detach(), dim=-1).t()).argmax(-1)
        if self.bank is None:
            self.bank = ConceptBank(self.hparams.num_concepts, self.hparams.bank_length, z.shape[1], device=z.device)
        loss = concept_contrastive_loss(z_s, zt_s, concepts, self.codebook.detach(), bank=self.bank,
                                        tau=self.hparams.tau_nce, pos_thresh=self.hparams.pos_thresh,
                                        neg_thresh=self.hparams.neg_thresh)
        logs["train/contrastive"] = loss.detach()
        lin = self._linear_loss(s_t, batch)
        if lin is not None:
            logs["train/linear"] = lin.detach()
            loss = loss + lin
        self._pending = (zt_s.detach(), concepts)
        return loss

    def _probe_step(self, t: torch.Tensor, idx: torch.Tensor, batch: dict[str, Any], logs: dict) -> torch.Tensor:
        leak = self.hparams.stage3_leak
        with torch.set_grad_enabled(leak):
            s_t = self.teacher_features(t, dropout=self.hparams.teacher_dropout)
        feats = s_t if leak else s_t.detach()
        loss = modularity_loss(gather_tokens(feats.detach(), idx), self.cluster_probe, tau=self.hparams.tau_modularity,
                               chunk=self.hparams.modularity_chunk)
        logs["train/cluster_modularity"] = -loss.detach()
        lin = self._linear_loss(feats, batch)
        if lin is not None:
            logs["train/linear"] = lin.detach()
            loss = loss + lin
        return loss

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None) -> None:
        """Clip the segment parameters only (never the cluster probe), as the release does."""
        if self.hparams.grad_clip and self.stage != "clusterbook":
            params = [p for m in (self.head, self.projection, self.linear_probe) for p in m.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.hparams.grad_clip)

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.stage != "head":
            return
        d = self.hparams.ema_decay
        for student, teacher in ((self.head, self.head_ema), (self.projection, self.projection_ema)):
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.lerp_(ps.detach(), 1 - d)
        if self._pending is not None and self.bank is not None:
            self.bank.update(*self._pending)
            self._pending = None

    def configure_optimizers(self) -> Any:
        lr = self.hparams.lr * self.hparams.lr_scale
        wd = self.hparams.weight_decay
        if self.stage == "clusterbook":
            opt = torch.optim.Adam([self.codebook], lr=lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.2)}
        if self.stage == "head":
            params = [p for m in (self.head, self.projection, self.linear_probe) for p in m.parameters()]
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        groups = [{"params": list(self.linear_probe.parameters()), "weight_decay": wd},
                  {"params": [self.cluster_probe], "weight_decay": 0.0}]
        if self.hparams.stage3_leak:
            groups.append({"params": list(self.head_ema.parameters()), "weight_decay": wd})
        opt = torch.optim.Adam(groups, lr=lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)}

    # -- unsupervised evaluation ----------------------------------------------------------------
    def cluster_predict(self, image: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cluster ids (cosine to the probe rows) and linear-probe ids at ``size``, no flip, no CRF."""
        feats = self.teacher_features(self.tokens(image), dropout=False)
        up = F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        cos = torch.einsum("bchw,kc->bkhw", F.normalize(up, dim=1), F.normalize(self.cluster_probe, dim=1))
        return cos.argmax(1), self.linear_probe(up).argmax(1)

    @torch.no_grad()
    def cluster_predict_crf(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Flip TTA in feature space, log_softmax(3 cos) → bilinear to ``size`` → softmax → dense CRF → argmax."""
        feats = self.teacher_features(self.tokens(image), dropout=False)
        feats_flip = self.teacher_features(self.tokens(image.flip(-1)), dropout=False).flip(-1)
        feats = (feats + feats_flip) / 2
        cos = torch.einsum("bchw,kc->bkhw", F.normalize(feats, dim=1), F.normalize(self.cluster_probe, dim=1))
        scores = F.interpolate(torch.log_softmax(3 * cos, dim=1), size=size, mode="bilinear", align_corners=False)
        probs = torch.softmax(scores, dim=1).float()
        rgb = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return argmax(self.crf_runner.on_normalised(rgb, probs), 1).to(image.device)

    def on_validation_epoch_start(self) -> None:
        n = self.hparams.num_classes
        self._hist = torch.zeros(n, n, dtype=torch.long, device=self.device)
        self._linear_conf = torch.zeros(n, n, dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        label = batch["label"]
        clusters, linear = self.cluster_predict(batch["image"], tuple(label.shape[-2:]))
        n = self.hparams.num_classes
        valid = (label >= 0) & (label < n)
        self._hist += torch.bincount(clusters[valid] * n + label[valid], minlength=n * n).view(n, n)
        self._linear_conf += torch.bincount(label[valid] * n + linear[valid], minlength=n * n).view(n, n)

    def on_validation_epoch_end(self) -> None:
        hist = self.trainer.strategy.reduce(self._hist, reduce_op="sum") if self.trainer.world_size > 1 else self._hist
        conf = self.trainer.strategy.reduce(self._linear_conf, reduce_op="sum") if self.trainer.world_size > 1 else self._linear_conf
        matched = hungarian_scores(hist.cpu().numpy())
        self.log("val/uss_mIoU", float(np.nan_to_num(matched.miou)), prog_bar=True)
        self.log("val/uss_pAcc", float(np.nan_to_num(matched.pixel_accuracy)))
        self.log("val/linear_mIoU", float(np.nan_to_num(scores_from_confusion(conf.cpu().numpy()).miou)))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["cause_stage"] = self.stage

    # -- comparison with k-means on the frozen backbone ------------------------------------------
    @torch.no_grad()
    def report(self, datamodule: Any, max_tokens: int = 200_000) -> dict[str, float]:
        """Hungarian-matched mIoU / pAcc of CAUSE and of spherical k-means on the same frozen tokens.

        k-means depends on its token sample and k-means++ draw by several points of mIoU, so it
        runs ``model.report_kmeans_seeds`` times (seed s draws its own sample and initialisation)
        and the report gives the mean, the standard deviation and the best seed: one draw is no
        baseline.
        """
        from dhr.ops.kmeans import spherical_kmeans

        kmeans_seeds = self.hparams.report_kmeans_seeds
        loader = datamodule.report_dataloader()
        if not loader:
            return {}
        self.eval()
        n = self.hparams.num_classes
        device = self.device
        gens = [torch.Generator().manual_seed(s) for s in range(kmeans_seeds)]
        samples: list[list[torch.Tensor]] = [[] for _ in gens]
        per_batch = max(1, max_tokens // max(1, len(loader)))
        for batch in loader:
            t = self.tokens(batch["image"].to(device))
            flat = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
            for g, bucket in zip(gens, samples, strict=True):
                bucket.append(flat[torch.randperm(len(flat), generator=g)[:per_batch].to(device)])
        centroids = torch.stack([spherical_kmeans(torch.cat(b), n, seed=s) for s, b in enumerate(samples)])  # (S, n, D)
        hist_cause = torch.zeros(n, n, dtype=torch.long, device=device)
        hist_kmeans = torch.zeros(kmeans_seeds, n, n, dtype=torch.long, device=device)
        hist_crf = torch.zeros_like(hist_cause)
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            valid = (label >= 0) & (label < n)
            clusters, _ = self.cluster_predict(image, tuple(label.shape[-2:]))
            hist_cause += torch.bincount(clusters[valid] * n + label[valid], minlength=n * n).view(n, n)
            if self.hparams.eval_crf:
                crf_clusters = self.cluster_predict_crf(image, tuple(label.shape[-2:]))
                hist_crf += torch.bincount(crf_clusters[valid] * n + label[valid], minlength=n * n).view(n, n)
            t = F.normalize(self.tokens(image), dim=1)
            for s in range(kmeans_seeds):
                cos = F.interpolate(torch.einsum("bdhw,kd->bkhw", t, centroids[s]), size=label.shape[-2:],
                                    mode="bilinear", align_corners=False)
                km = cos.argmax(1)
                hist_kmeans[s] += torch.bincount(km[valid] * n + label[valid], minlength=n * n).view(n, n)
        cause = hungarian_scores(hist_cause.cpu().numpy())
        kmeans = [hungarian_scores(h.cpu().numpy()) for h in hist_kmeans]
        km_miou = np.array([k.miou for k in kmeans])
        km_pacc = np.array([k.pixel_accuracy for k in kmeans])
        split = datamodule.info.split_dir_name(datamodule.val_split)
        out = {"uss/cause_mIoU": cause.miou, "uss/cause_pAcc": cause.pixel_accuracy,
               "uss/kmeans_mIoU": float(km_miou.mean()), "uss/kmeans_mIoU_std": float(km_miou.std()),
               "uss/kmeans_mIoU_best": float(km_miou.max()), "uss/kmeans_pAcc": float(km_pacc.mean())}
        with_crf = ""
        if self.hparams.eval_crf:
            crf = hungarian_scores(hist_crf.cpu().numpy())
            out.update({"uss/cause_crf_mIoU": crf.miou, "uss/cause_crf_pAcc": crf.pixel_accuracy})
            with_crf = f" (with flip + CRF: mIoU {crf.miou:.1f} pAcc {crf.pixel_accuracy:.1f})"
        print(f"USS ({datamodule.info.name}/{split}, Hungarian-matched, {n} clusters): "
              f"CAUSE mIoU {cause.miou:.1f} pAcc {cause.pixel_accuracy:.1f}{with_crf} | "
              f"k-means on frozen backbone tokens over {kmeans_seeds} seeds: mIoU {km_miou.mean():.1f} "
              f"± {km_miou.std():.1f} (best {km_miou.max():.1f}) pAcc {km_pacc.mean():.1f}")
        return out
