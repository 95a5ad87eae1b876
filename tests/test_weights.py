"""dhr.weights and direct loading: official-layout state dicts (official names and shapes, random values)
load bit-exact through the key maps, strictly, with named missing and unexpected keys."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARED_DATA, compose_cfg, needs_shared_data

from dhr.errors import DHRError
from dhr.utils.checkpoint import load_module
from dhr.weights import convert


def official_dhr_state(num_classes: int = 21, seed: int = 0) -> dict[str, torch.Tensor]:
    """``DeepLabv3plus_with_DHR('resnet101', 21, 20)``'s keys as the release names them.

    Backbone: the torchvision ResNet-101 under ``model.`` (no fc). Head: ``ConvBlock``s (conv + bn)
    named as in core/networks.py; the CAM head is ``classifier`` (2048 -> 20).
    """
    import torchvision

    torch.manual_seed(seed)
    state = {f"model.{k}": v for k, v in torchvision.models.resnet101().state_dict().items() if not k.startswith("fc.")}

    def block(prefix: str, cin: int, cout: int, k: int) -> None:
        state[f"{prefix}.conv.weight"] = torch.randn(cout, cin, k, k)
        for name in ("weight", "bias", "running_mean"):
            state[f"{prefix}.bn.{name}"] = torch.randn(cout)
        state[f"{prefix}.bn.running_var"] = torch.rand(cout) + 0.5
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    block("seg_decoder.aspp.aspp1", 2048, 256, 1)
    for i in (2, 3, 4):
        block(f"seg_decoder.aspp.aspp{i}", 2048, 256, 3)
    block("seg_decoder.aspp.gap.1", 2048, 256, 1)
    block("seg_decoder.aspp.block", 1280, 256, 1)
    block("seg_decoder.low_block", 256, 48, 1)
    block("seg_decoder.mid_block.0", 304, 256, 3)
    block("seg_decoder.mid_block.1", 256, 256, 3)
    state["seg_decoder.classifier.weight"] = torch.randn(num_classes, 256, 1, 1)
    state["classifier.weight"] = torch.randn(num_classes - 1, 2048, 1, 1)
    return state


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "last.pth"
    state = official_dhr_state()
    torch.save(state, path)
    return path, state


def test_the_official_dhr_checkpoint_converts_bit_exact(official_pth, tmp_path):
    from dhr.models.official import DHR_RULES

    path, state = official_pth
    report = convert("dhr", path, tmp_path / "dhr.ckpt", {})
    assert report["dropped"] == ["classifier.weight"] and report["tensors"] == len(state) - 1 == 679
    module = load_module(tmp_path / "dhr.ckpt", num_classes=21)
    assert type(module).__name__ == "SegmentationModule"
    own = module.state_dict()
    for key, value in state.items():
        if key == "classifier.weight":
            continue
        target = next(t(m) for p, t in DHR_RULES if (m := p.match(key)))
        assert torch.equal(own[target], value), key
    kept = convert("dhr", path, tmp_path / "dhr_cam.ckpt", {"cam": "keep"})
    assert kept["dropped"] == [] and kept["module"] == "dhr.modules.dhr.DHRModule"
    dhr = load_module(tmp_path / "dhr_cam.ckpt", num_classes=21)
    assert torch.equal(dhr.cam_head.weight, state["classifier.weight"])
    with pytest.raises(DHRError, match="exists; pass overwrite=true"):
        convert("dhr", path, tmp_path / "dhr.ckpt", {})


def test_missing_unexpected_and_wrong_class_count_are_named(official_pth, tmp_path):
    path, state = official_pth
    broken = dict(state)
    del broken["seg_decoder.low_block.bn.running_var"]
    broken["seg_decoder.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in broken.items()}}, tmp_path / "wrapped.pth")
    with pytest.raises(DHRError, match=r"not in the official DeepLabv3\+ layout, e\.g\. \['seg_decoder\.extra\.weight'\]"):
        convert("dhr", tmp_path / "wrapped.pth", tmp_path / "x.ckpt", {})
    del broken["seg_decoder.extra.weight"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(DHRError, match=r"missing 1: \['net\.head\.low_level\.1\.running_var'\]"):
        convert("dhr", tmp_path / "missing.pth", tmp_path / "x.ckpt", {})
    with pytest.raises(DHRError, match=r"shape mismatches 1.*net\.head\.classifier\.weight \(21, 256, 1, 1\) vs \(81, 256, 1, 1\)"):
        convert("dhr", path, tmp_path / "x.ckpt", {"dataset": "coco"})


@pytest.mark.slow
@needs_shared_data
def test_the_official_checkpoint_evaluates_on_voc_val_directly_by_path(official_pth, tmp_path):
    """The documented command: python -m dhr.predict ckpt=last.pth dataset=voc split=val (here the VOC sample)."""
    from dhr.predict import run

    path, _ = official_pth
    cfg = compose_cfg("predict", [f"ckpt={path}", "dataset=voc_sample", f"paths.data_root={SHARED_DATA}", "split=val",
                                  "infer.scales=[0.25]", "infer.flip=false", "data.num_workers=0", "~callbacks.progress_bar",
                                  f"out_dir={tmp_path / 'pred'}"], tmp_path / "run")
    out = run(cfg)
    assert out["written"] == 23 and out["scores"]["evaluated"] == 23
    assert 0.0 <= out["scores"]["mIoU"] <= 100.0


def official_cause_decoder(dim: int = 48, queries: int = 529, reduced: int = 90, ffn: int = 2048) -> dict[str, torch.Tensor]:
    """DHR's ``Segment_TR`` state (core/uss/layers.py): ``head_ema.query_pos`` + the 24 ``head_ema.tr.*`` tensors."""
    torch.manual_seed(1)
    r = torch.randn
    state = {"head_ema.query_pos": r(queries, dim)}
    for attn in ("self_attn", "multihead_attn"):
        state |= {f"head_ema.tr.{attn}.in_proj_weight": r(3 * dim, dim), f"head_ema.tr.{attn}.in_proj_bias": r(3 * dim),
                  f"head_ema.tr.{attn}.out_proj.weight": r(dim, dim), f"head_ema.tr.{attn}.out_proj.bias": r(dim)}
    state |= {"head_ema.tr.linear1.weight": r(ffn, dim), "head_ema.tr.linear1.bias": r(ffn),
              "head_ema.tr.linear2.weight": r(dim, ffn), "head_ema.tr.linear2.bias": r(dim)}
    for n in (1, 2, 3):
        state |= {f"head_ema.tr.norm{n}.weight": r(dim), f"head_ema.tr.norm{n}.bias": r(dim)}
    state |= {"head_ema.tr.f1.weight": r(reduced, dim, 1, 1), "head_ema.tr.f1.bias": r(reduced),
              "head_ema.tr.f2.0.weight": r(dim, dim, 1, 1), "head_ema.tr.f2.0.bias": r(dim),
              "head_ema.tr.f2.2.weight": r(reduced, dim, 1, 1), "head_ema.tr.f2.2.bias": r(reduced)}
    return state


def test_official_cause_files_convert_and_load_into_the_feature_exporter(tmp_path):
    import numpy as np

    from dhr.features import load_teacher

    decoder = official_cause_decoder()
    assert len(decoder) == 25
    codebook = torch.randn(64, 48)
    torch.save({"decoder": decoder, "codebook": codebook}, tmp_path / "CAUSE_VOC2012.pt")
    vit = {"name": "vit_small_patch8_224", "weights": None, "embed_dim": 48, "depth": 2, "num_heads": 2}
    _, head = load_teacher(tmp_path / "CAUSE_VOC2012.pt", vit)  # direct loading by path
    assert torch.equal(head.query_pos, decoder["head_ema.query_pos"]) and torch.equal(head.codebook, codebook)
    # CAUSE's own segment_tr.pth (student, projection heads and teacher) + modular.npy
    repo = {**decoder, **{k.replace("head_ema.", "head."): v for k, v in decoder.items()},
            "projection_head.f.weight": torch.zeros(3), "linear.f.weight": torch.zeros(2)}
    torch.save(repo, tmp_path / "segment_tr.pth")
    np.save(tmp_path / "modular.npy", codebook.numpy())
    with pytest.raises(DHRError, match="no codebook; pass the CAUSE repository's modular.npy"):
        convert("cause", tmp_path / "segment_tr.pth", tmp_path / "x.pt", {})
    convert("cause", tmp_path / "segment_tr.pth", tmp_path / "CAUSE_converted.pt", {"codebook": str(tmp_path / "modular.npy")})
    converted = torch.load(tmp_path / "CAUSE_converted.pt", weights_only=True)
    assert set(converted["decoder"]) == set(decoder) and torch.equal(converted["codebook"], codebook)
    _, again = load_teacher(tmp_path / "CAUSE_converted.pt", vit)
    assert all(torch.equal(again.state_dict()[k.removeprefix("head_ema.")], v) for k, v in decoder.items())


def test_dino_dinov2_and_torchvision_files_convert_strictly(tmp_path):
    import timm
    import torchvision

    from dhr.models.backbones import backbone_from_cfg

    # DINO v1 names are timm's; the tiny ViT stands in for ViT-S/8
    dino = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, embed_dim=48, depth=2, num_heads=2).state_dict()
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in dino.items()}}, tmp_path / "dino.pth")
    report = convert("dino", tmp_path / "dino.pth", tmp_path / "dino_timm.pth", {"backbone": "vit_tiny"})
    assert report["tensors"] == len(dino)
    assert all(torch.equal(v, dino[k]) for k, v in torch.load(tmp_path / "dino_timm.pth", weights_only=True).items())
    bad = {**dino, "blocks.9.attn.qkv.weight": torch.zeros(1)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(DHRError, match="keys do not fit this ViT"):
        convert("dino", tmp_path / "bad.pth", tmp_path / "x.pth", {"backbone": "vit_tiny"})
    # DINOv2 releases carry a mask_token that timm drops
    v2 = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0).state_dict()
    torch.save({**v2, "mask_token": torch.zeros(1, 768)}, tmp_path / "dinov2_vitb14_pretrain.pth")
    out = convert("dinov2", tmp_path / "dinov2_vitb14_pretrain.pth", tmp_path / "v2.pth", {})
    assert out["tensors"] == len(v2)
    # a torchvision ResNet file from before num_batches_tracked existed
    tv = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(tv, tmp_path / "resnet18-f37072fd.pth")
    out = convert("torchvision", tmp_path / "resnet18-f37072fd.pth", tmp_path / "r18.pth", {"backbone": "resnet18"})
    assert out["filled_num_batches_tracked"] == 20
    net, _ = backbone_from_cfg({"name": "resnet18", "output_stride": 16, "weights": str(tmp_path / "r18.pth")})
    assert torch.equal(net.state_dict()["layer3.1.conv2.weight"], tv["layer3.1.conv2.weight"])
    with pytest.raises(DHRError, match=r"\['cam'\]: not options of KIND=torchvision"):
        convert("torchvision", tmp_path / "resnet18-f37072fd.pth", tmp_path / "z.pth", {"cam": "keep"})
    with pytest.raises(DHRError, match="KIND='mars'"):
        convert("mars", tmp_path / "r18.pth", tmp_path / "y.pth", {})


def test_the_command_line_exits_2_naming_the_problem(tmp_path, capsys):
    from dhr.weights import main

    main(["--help"])
    assert "KIND: dhr, cause, dino, dinov2, torchvision" in capsys.readouterr().out
    for argv, message in ((["convert", "dhr"], "expected: python -m dhr.weights convert KIND SRC DST"),
                          (["convert", "dhr", str(tmp_path / "none.pth"), str(tmp_path / "x")], "none.pth: file not found"),
                          (["convert", "torchvision", str(tmp_path), "x", "backbone"], "options are key=value")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
