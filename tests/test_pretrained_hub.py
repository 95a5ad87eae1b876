"""backbone.pretrained=true: timm's official weights from the Hugging Face cache; offline + uncached fails at once."""

from __future__ import annotations

import time

import pytest
import torch

from dhr.errors import DHRError
from dhr.models.backbones import backbone_from_cfg
from dhr.models.pretrained import pretrained_file

RESNET18 = {"name": "resnet18", "output_stride": 16, "weights": None, "pretrained": True, "pretrained_tag": "tv_in1k"}


def fake_hub_cache(cache, repo: str, state: dict) -> None:
    """The Hub cache layout huggingface_hub reads: refs/main -> snapshots/<commit>/model.safetensors."""
    from safetensors.torch import save_file

    base = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_cached_official_weights_load_offline(offline_cache):
    import timm

    torch.manual_seed(3)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    fake_hub_cache(offline_cache, "timm/resnet18.tv_in1k", state)
    net, stride = backbone_from_cfg(RESNET18)
    assert stride == 16
    torch.testing.assert_close(net.state_dict()["conv1.weight"], state["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(net.state_dict()["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"], rtol=0, atol=0)


def test_offline_and_uncached_fails_at_once_naming_the_file_and_the_fix(offline_cache):
    start = time.perf_counter()
    with pytest.raises(DHRError) as err:
        backbone_from_cfg(RESNET18)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "timm/resnet18.tv_in1k/model.safetensors is not in the Hugging Face cache" in message
    assert "huggingface-cli download timm/resnet18.tv_in1k model.safetensors" in message
    assert "backbone.weights=PATH" in message and "resnet18-f37072fd.pth" in message


def test_dino_and_dinov2_tags_resolve_to_their_hub_repositories(offline_cache):
    with pytest.raises(DHRError, match=r"timm/vit_small_patch8_224\.dino/"):
        pretrained_file("vit_small_patch8_224", "dino")
    with pytest.raises(DHRError, match=r"timm/vit_base_patch14_dinov2\.lvd142m/"):
        pretrained_file("vit_base_patch14_dinov2", "lvd142m")
    with pytest.raises(DHRError, match="no Hub weights"):
        pretrained_file("resnet18", "no_such_tag")
    with pytest.raises(DHRError, match="no official weights"):
        pretrained_file("vit_small_patch8_224", None)


def test_train_stops_before_any_data_work(offline_cache, tmp_path):
    from conftest import compose_cfg

    from dhr.train import run

    data = tmp_path / "data"
    cfg = compose_cfg("train", [f"paths.data_root={data}", "backbone.pretrained=true"], tmp_path / "run")
    with pytest.raises(DHRError, match="not in the Hugging Face cache"):
        run(cfg)
    assert not (data / "SYNTH").exists()  # the synthetic set was not generated


def test_a_checkpoint_rebuilds_without_the_weight_file(tmp_path):
    from dhr.utils.checkpoint import without_weight_files

    hp = {"backbone": {"name": "resnet18", "weights": "/gone.pth", "pretrained": True, "weights_package": "x"}, "init_from": "c.ckpt"}
    assert without_weight_files(hp) == {"backbone": {"name": "resnet18", "weights": None, "pretrained": False,
                                                     "weights_package": None}, "init_from": None}


def test_the_pipeline_checks_every_stage_before_the_first_runs(offline_cache, tmp_path, synth_root):
    from conftest import compose_cfg

    from dhr.pipeline import run

    cfg = compose_cfg("pipeline", ["dataset=synthetic", f"paths.data_root={synth_root}",
                                   'pipeline.overrides.final=["backbone.pretrained=true"]'], tmp_path / "pipe")
    with pytest.raises(DHRError, match="timm/resnet18.tv_in1k/model.safetensors is not in the Hugging Face cache"):
        run(cfg)
    assert not list((tmp_path / "pipe").glob("seeds-*"))  # the final stage's weights stopped it before the seeds
