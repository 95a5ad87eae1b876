"""Every config group option composes and resolves; dataset configs agree with the spec."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA, compose_cfg
from omegaconf import OmegaConf

from dhr.conf_path import CONFIG_DIR
from dhr.data.layout import DatasetInfo

GROUPS = {
    group: sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    for group in ("dataset", "recipe", "crf", "backbone", "trainer", "logger", "debug", "experiment", "model", "wss",
                  "callbacks", "infer")  # data: chosen by the model
}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_train_config_composes_and_resolves(tmp_path, group, option):
    extra = ["dataset.classes=[background,cat]"] if (group, option) == ("dataset", "folder") else []  # its class list is the user's
    cfg = compose_cfg("train", [f"{group}={option}", *extra], tmp_path)
    OmegaConf.resolve(cfg)
    if cfg.model._target_.endswith("DINOModule"):  # self-supervised: it knows no class, reads no label
        assert "num_classes" not in cfg.model and cfg.data._target_.endswith("MultiCropDataModule")
    else:
        assert cfg.model.num_classes == len(cfg.dataset.classes)
    if cfg.data._target_.endswith("SegmentationDataModule"):  # CAUSE keeps its own batch of 16
        assert cfg.data.batch_size == cfg.recipe.batch_size


def test_other_entry_points_compose(tmp_path):
    predict = compose_cfg("predict", ["ckpt=y", "dataset=voc", "crf.bilateral_sxy=50"], tmp_path)
    OmegaConf.resolve(predict)
    assert predict.ckpt == "y" and list(predict.infer.scales) == [1.0, 0.5, 1.5, 2.0]  # the VOC recipe's scales
    assert predict.crf.bilateral_sxy == 50
    evaluate = compose_cfg("evaluate", ["pred=x", "dataset=coco"], tmp_path)
    OmegaConf.resolve(evaluate)
    assert evaluate.pred == "x" and evaluate.dataset.name == "COCO2014"
    features = compose_cfg("features", ["ckpt=z"], tmp_path)
    OmegaConf.resolve(features)
    assert features.backbone.name == "vit_small_patch8_224"


def test_every_dataset_has_a_recipe_and_picks_it(tmp_path):
    assert set(GROUPS["dataset"]) == set(GROUPS["recipe"])
    for option in GROUPS["dataset"]:
        picked = compose_cfg("train", [f"dataset={option}"], tmp_path).recipe
        assert picked == compose_cfg("train", [f"dataset={option}", f"recipe={option}"], tmp_path).recipe, option
    voc = compose_cfg("train", ["dataset=voc_sample"], tmp_path).recipe
    assert voc.crop_size == 512 and voc.max_epochs == 100  # the sample reads the real recipe
    quick = compose_cfg("train", ["dataset=synthetic_quick"], tmp_path).recipe
    assert quick.crop_size == 96 and quick.max_epochs == 5 and list(quick.infer_scales) == [1.0]
    cfg = compose_cfg("train", ["dataset=voc", "recipe=synthetic", "recipe.lr=0.5"], tmp_path)
    assert cfg.recipe.crop_size == 96 and cfg.model.optim.lr == 0.5


def test_dhr_switches_live_under_model_dhr_and_sweep(tmp_path):
    from conftest import cli

    cfg = compose_cfg("train", ["model=dhr", "model.dhr.tau=0.5", "model.dhr.step1.bg_mode=official"], tmp_path)
    assert cfg.model.dhr.tau == 0.5 and cfg.model.dhr.step1.bg_mode == "official" and "dhr" not in cfg
    from dhr.ops.relabel import RelabelConfig

    parsed = RelabelConfig.from_cfg(OmegaConf.to_container(cfg.model.dhr, resolve=True))
    assert parsed.tau == 0.5 and parsed.step1.bg_mode == "official"
    shown = cli("dhr.train", "model=dhr", "model.dhr.tau=0.5", "--cfg", "job")
    assert shown.rc == 0 and OmegaConf.create(shown.stdout).model.dhr.tau == 0.5
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep = OverridesParser.create().parse_overrides(["model.dhr.tau=0.6,0.8"])[0]
    values = [float(v) for v in sweep.sweep_iterator()]
    assert values == [0.6, 0.8]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for tau in values:  # each job of `-m model.dhr.tau=0.6,0.8` composes
            assert compose("train", overrides=["model=dhr", f"model.dhr.tau={tau}"]).model.dhr.tau == tau


def test_every_config_default_maps_onto_its_dataclass():
    from dhr.modules.optim import OptimConfig
    from dhr.ops.crf import CRFParams
    from dhr.ops.relabel import RelabelConfig
    from dhr.utils.config import conf_node

    assert RelabelConfig.defaults().tau == conf_node("model/dhr.yaml", "model.dhr")["tau"]
    assert CRFParams.defaults().bilateral_sxy == conf_node("crf/default.yaml")["bilateral_sxy"]
    for model in ("deeplabv3plus", "cam", "dhr"):
        node = conf_node(f"model/{model}.yaml")
        optim = dict((node.get("model") or node)["optim"], lr=0.01)  # lr interpolates the recipe
        assert OptimConfig.from_cfg(optim).head_lr_mult == 10.0


@pytest.mark.parametrize("name,classes,background,first", [
    ("voc", 21, True, "background"), ("coco", 81, True, "background"), ("context", 59, False, "aeroplane"),
    ("ade", 150, False, "wall"), ("stuff", 171, False, "person"), ("synthetic", 9, True, "background"),
])
def test_dataset_class_lists(name, classes, background, first):
    info = DatasetInfo.from_cfg(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "dataset" / f"{name}.yaml")))
    assert info.num_classes == classes and info.has_background == background and info.classes[0] == first


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data not present")
def test_class_lists_match_the_shipped_samples():
    voc = OmegaConf.load(CONFIG_DIR / "dataset" / "voc.yaml")
    coco = OmegaConf.load(CONFIG_DIR / "dataset" / "coco.yaml")
    assert list(voc.classes) == (SHARED_DATA / "voc2012_sample" / "classes.txt").read_text().splitlines()
    assert list(coco.classes) == (SHARED_DATA / "coco128_seg" / "classes.txt").read_text().splitlines()
    ade = OmegaConf.load(CONFIG_DIR / "dataset" / "ade.yaml")
    rows = (SHARED_DATA / "ade20k_sample" / "objectInfo150.txt").read_text().splitlines()[1:]
    official_first_names = [r.split("\t")[-1].split(",")[0].strip() for r in rows]
    assert sum(a == b for a, b in zip(ade.classes, official_first_names, strict=True)) >= 140


def test_experiment_sets_the_published_recipe(tmp_path):
    cfg = compose_cfg("train", ["experiment=voc_deeplabv3plus_r101"], tmp_path)
    assert cfg.dataset.name == "VOC2012" and cfg.backbone.name == "resnet101" and cfg.backbone.output_stride == 8
    assert cfg.recipe.crop_size == 512 and cfg.recipe.batch_size == 16
    assert list(cfg.infer.scales) == [1.0, 0.5, 1.5, 2.0]


@pytest.mark.parametrize("data", ["voc", "coco", "context", "ade", "stuff"])
def test_final_stage_presets_of_every_benchmark(tmp_path, data):
    deeplab = compose_cfg("train", [f"experiment={data}_deeplabv3plus_r101"], tmp_path / "d")
    assert deeplab.backbone.name == "resnet101" and deeplab.backbone.output_stride == 8
    assert deeplab.model._target_.endswith("SegmentationModule")
    m2f = compose_cfg("train", [f"experiment={data}_mask2former_swin_l"], tmp_path / "m")
    assert m2f.backbone.name.startswith("swin_large") and m2f.model._target_.endswith("Mask2FormerModule")
    assert m2f.trainer.precision == "16-mixed" and m2f.model.optim.lr == 1e-4 and m2f.model.optim.backbone_lr_mult == 0.1
    assert m2f.recipe.crop_size == (640 if data == "ade" else 512) and m2f.tag == "Mask2Former"
    papers = {"voc": (79.6, 81.7), "coco": (53.9, 56.8), "context": (49.0, 53.6), "ade": (32.9, 36.9), "stuff": (37.4, 41.1)}
    assert (deeplab.expected.value, m2f.expected.value) == papers[data]
    assert deeplab.expected.metric == m2f.expected.metric == "mIoU" and "README" in deeplab.expected.source or data != "voc"


def test_the_expected_number_is_printed_next_to_the_run(capsys):
    from dhr.train import report_expected

    check = report_expected({"metric": "mIoU", "value": 81.7, "tolerance": 1.0, "source": "README"}, {"mIoU": 50.0}, "val")
    assert check["status"] == "outside"
    assert "expected val: mIoU 50.0 vs expected 81.7 ± 1.0 (README): outside" in capsys.readouterr().out
    assert report_expected(None, {"mIoU": 50.0}, "val") is None and capsys.readouterr().out == ""
