"""Every config group option composes and resolves; dataset configs agree with the spec."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA, compose_cfg
from omegaconf import OmegaConf

from dhr.conf_path import CONFIG_DIR
from dhr.data.layout import DatasetInfo

GROUPS = {
    group: sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    for group in ("dataset", "backbone", "trainer", "logger", "debug", "experiment", "model")
}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_train_config_composes_and_resolves(tmp_path, group, option):
    cfg = compose_cfg("train", [f"{group}={option}"], tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.model.num_classes == len(cfg.dataset.classes)
    if cfg.data._target_.endswith("SegmentationDataModule"):  # CAUSE keeps its own batch of 16
        assert cfg.data.batch_size == cfg.recipe.batch_size


@pytest.mark.parametrize("name", ["predict", "evaluate"])
def test_other_entry_points_compose(tmp_path, name):
    cfg = compose_cfg(name, ["pred=x"] if name == "evaluate" else ["ckpt=y"], tmp_path)
    OmegaConf.resolve(cfg)


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
