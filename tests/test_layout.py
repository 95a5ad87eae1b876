"""Dataset tree reading and up-front validation: each bad input gets one clear DHRError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from dhr.data.layout import DatasetInfo, DatasetLayout
from dhr.data.palette import make_palette
from dhr.data.tags import write_xml
from dhr.errors import DHRError
from dhr.utils.io import save_label_png

VOC_CLASSES = (SHARED_DATA / "voc2012_sample" / "classes.txt").read_text().split() if SHARED_DATA.is_dir() else []


def voc_info(name: str = "VOC2012") -> DatasetInfo:
    classes = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    return DatasetInfo(name=name, classes=tuple(classes), splits={"train": "train_aug", "val": "validation"}, background_id=0)


def make_tree(root: Path, n: int = 3, size: tuple[int, int] = (20, 30)) -> DatasetLayout:
    layout = DatasetLayout(root, voc_info())
    split = layout.split_dir("train")
    for i in range(n):
        (split / "image").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size[1], size[0]), (i * 40, 0, 0)).save(split / "image" / f"im{i}.jpg")
        mask = np.zeros(size, np.uint8)
        mask[:5, :5] = 15
        save_label_png(split / "mask" / f"im{i}.png", mask, make_palette("voc", 21))
        write_xml(split / "xml" / f"im{i}.xml", filename=f"im{i}.jpg", size=size, objects=[("person", (0, 0, 4, 4))])
    return layout


def test_valid_tree_passes_and_reads_tags(tmp_path):
    layout = make_tree(tmp_path)
    assert layout.validate("train", tags=True) == ["im0", "im1", "im2"]
    assert layout.read_tags("train") == {f"im{i}": (15,) for i in range(3)}
    assert layout.info.multi_hot([15]).tolist() == [0] * 14 + [1] + [0] * 5


def test_missing_split_lists_the_present_ones(tmp_path):
    layout = make_tree(tmp_path)
    with pytest.raises(DHRError, match=r"validation/image: split folder not found \(splits present: \['train_aug'\]\)"):
        layout.validate("val")


def test_an_image_id_with_two_files_is_an_error(tmp_path):
    layout = make_tree(tmp_path)
    Image.new("RGB", (30, 20)).save(layout.split_dir("train") / "image" / "im1.png")
    with pytest.raises(DHRError, match=r"image: 1 image ids have two files \(im1.jpg and im1.png\)"):
        layout.image_paths("train")


def test_input_folders_are_every_read_folder_of_every_split(tmp_path):
    layout = make_tree(tmp_path)
    (layout.split_dir("train") / "CAUSE").mkdir()
    (layout.split_dir("train") / "CAUSE" / "im0.pt").write_bytes(b"")
    (layout.split_dir("train") / "notes").mkdir()  # neither a known folder nor features: not an input
    assert sorted(layout.input_folders()) == ["VOC2012/train_aug/CAUSE", "VOC2012/train_aug/image",
                                              "VOC2012/train_aug/mask", "VOC2012/train_aug/xml"]


def test_image_without_mask(tmp_path):
    layout = make_tree(tmp_path)
    (layout.mask_dir("train") / "im1.png").unlink()
    with pytest.raises(DHRError, match=r"(?s)1 problem.*mask/im1.png: missing mask for image im1.jpg"):
        layout.validate("train")


def test_size_mismatch(tmp_path):
    layout = make_tree(tmp_path)
    save_label_png(layout.mask_dir("train") / "im2.png", np.zeros((21, 30), np.uint8), make_palette("voc", 21))
    with pytest.raises(DHRError, match=r"im2.png: mask is 30x21 but image is 30x20"):
        layout.validate("train")


def test_mask_values_out_of_range(tmp_path):
    layout = make_tree(tmp_path)
    bad = np.zeros((20, 30), np.uint8)
    bad[0, 0] = 40
    save_label_png(layout.mask_dir("train") / "im0.png", bad, make_palette("voc", 21))
    assert layout.validate("train")  # the quick check reads headers only
    from dhr.data.doctor import check_split

    report = check_split(layout, "train_aug", progress=False)  # the full check decodes every mask
    assert report.bad_ids == {"im0"}
    assert any("im0.png: values [40] are not class ids 0..20 or 255" in e for e in report.errors)


def test_unknown_class_name_in_xml(tmp_path):
    layout = make_tree(tmp_path)
    write_xml(layout.split_dir("train") / "xml" / "im1.xml", filename="im1.jpg", size=(20, 30),
              objects=[("persn", (0, 0, 1, 1))])
    with pytest.raises(DHRError, match=r"im1.xml: unknown class name\(s\) \['persn'\]"):
        layout.validate("train", tags=True)


def test_corrupt_mask_and_image(tmp_path):
    layout = make_tree(tmp_path)
    (layout.mask_dir("train") / "im0.png").write_bytes(b"not a png")
    (layout.split_dir("train") / "image" / "im1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DHRError, match=r"2 problem") as err:
        layout.validate("train")
    assert "im0.png: cannot read mask" in str(err.value) and "im1.jpg: cannot read image" in str(err.value)


def test_class_json_must_match_config(tmp_path):
    layout = make_tree(tmp_path)
    (layout.root / "VOC2012.json").write_text(json.dumps({"names": ["background", "cat"], "ignore": 255}))
    with pytest.raises(DHRError, match=r"VOC2012.json: its class names differ .*\('cat' where dataset.classes has 'aeroplane'\)"):
        layout.validate("train")
    (layout.root / "VOC2012.json").write_text(json.dumps({"names": list(layout.info.classes[:3]), "ignore": 255}))
    with pytest.raises(DHRError, match="VOC2012.json: its class names differ .*3 names where dataset.classes has 21"):
        layout.validate("train")


def test_num_classes_must_match_class_list():
    with pytest.raises(DHRError, match="num_classes=20 but 21 class names"):
        DatasetInfo.from_cfg({"name": "VOC2012", "num_classes": 20, "classes": list(voc_info().classes)})


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data not present")
def test_shared_voc_sample_validates_with_cls_labels_json():
    info = DatasetInfo(name="voc2012_sample", classes=tuple(VOC_CLASSES), background_id=0)
    layout = DatasetLayout(SHARED_DATA, info)
    ids = layout.validate("val", tags=True)
    assert len(ids) == 23
    assert layout.read_tags("val")["2007_000129"] == (2, 15)  # bicycle, person


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data not present")
def test_shared_ade_sample_validates_without_background(tmp_path):
    from conftest import REPO
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "dataset" / "ade.yaml")
    info = DatasetInfo.from_cfg({**OmegaConf.to_container(cfg), "name": "ade20k_sample", "splits": {}})
    layout = DatasetLayout(SHARED_DATA, info)
    assert len(layout.validate("val", tags=True)) == 3
    assert not info.has_background and len(info.foreground_ids) == 150
    tmp_copy = tmp_path / "ade20k_sample"
    shutil.copytree(SHARED_DATA / "ade20k_sample", tmp_copy)
    assert DatasetLayout(tmp_path, info).read_tags("val")["ADE_val_00000002"][0] == 0  # wall


def test_untagged_training_images_are_left_out_with_a_log_line(tmp_path, synth_root, caplog):
    import logging

    from conftest import compose_cfg, tiny_train_overrides
    from hydra.utils import instantiate

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    xml = root / "SYNTH" / "train" / "xml"
    tagged = [i for i, t in DatasetLayout(root, DatasetInfo.from_cfg(compose_cfg("train", tiny_train_overrides(root),
                                                                                tmp_path / "r0").dataset)
                                          ).read_tags("train").items() if t]
    emptied = tagged[:2]
    for name in emptied:
        write_xml(xml / f"{name}.xml", filename=f"{name}.jpg", size=(64, 64), objects=[])
    overrides = [o for o in tiny_train_overrides(root) if not o.startswith("model.")]
    cfg = compose_cfg("train", [*overrides, "model=cam"], tmp_path / "run")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    with caplog.at_level(logging.WARNING, logger="dhr.data.datamodule"):
        datamodule.setup("fit")
    assert len(datamodule.data_train) == len(tagged) - 2
    assert f"{24 - len(tagged) + 2} of 24 training images have no tag and are left out" in caplog.text
    assert all(name not in datamodule.data_train.ids for name in emptied)
