"""scripts/pretrain_vit.py: label-free dense SwAV pretraining whose output loads as ``backbone.weights``."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import REPO, TINY_SYNTH


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain_vit.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_pretrained_weights_load_as_backbone_and_are_never_overwritten(tmp_path, synth_root):
    from dhr.models.dense_swav import balanced_assignment, correspondence
    from dhr.models.vit import FrozenViT

    gen = ",".join(f"{k}:{v}" for k, v in TINY_SYNTH.items())
    out = tmp_path / "tiny.pth"
    args = [f"out={out}", "steps=3", "batch=4", "view=32", f"paths.data_root={synth_root}",
            f"dataset.generate={{{gen}}}", "data.num_workers=0", "model.resolution=64",
            "backbone.embed_dim=16", "backbone.depth=1"]
    done = _run(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 3/3" in done.stdout
    arch = dict(embed_dim=16, depth=1, num_heads=2)
    trained = FrozenViT("vit_small_patch8_224", weights=out, **arch)  # strict load of the written file
    saved = torch.load(out, map_location="cpu", weights_only=True)
    for key, value in trained.vit.state_dict().items():
        assert torch.equal(value, saved[key]), key
    random = FrozenViT("vit_small_patch8_224", **arch)  # the same seeded initialisation, untrained
    assert not torch.equal(random.vit.patch_embed.proj.weight, trained.vit.patch_embed.proj.weight)
    again = _run(args)
    assert again.returncode != 0 and "never overwrites" in again.stderr
    assert torch.equal(torch.load(out, map_location="cpu", weights_only=True)["cls_token"], saved["cls_token"])

    # the pieces: an identical pair of views corresponds token for token; assignments are balanced
    theta = torch.tensor([[[0.75, 0.0, 0.1], [0.0, 0.75, -0.2]]])
    where, valid = correspondence(theta, theta, 4)
    u = (torch.arange(4) + 0.5) / 4 * 2 - 1
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij")[::-1], -1).view(1, -1, 2)
    torch.testing.assert_close(where, grid)
    assert valid.any()
    scores = torch.rand(64, 8) * 2 - 1  # cosines
    codes = balanced_assignment(scores)
    torch.testing.assert_close(codes.sum(1), torch.ones(64))  # each token's code is a distribution
    balanced = balanced_assignment(scores, iters=200)  # converged: every prototype takes 64 / 8 tokens
    torch.testing.assert_close(balanced.sum(0), torch.full((8,), 8.0), rtol=1e-3, atol=0.0)
