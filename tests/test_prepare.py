"""dhr.prepare on tiny trees in the official formats: split lists, label sources, overlaps, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from official_formats import VOC_CLASSES, make_ade, make_coco, make_context, make_stuff, make_voc
from PIL import Image

from dhr.data.tags import read_xml_names
from dhr.errors import DHRError
from dhr.prepare import run
from dhr.utils.cli import compose_config
from dhr.utils.io import read_label_png


def prepare(dataset: str, src: Path, out: Path, *extra: str) -> dict:
    cfg = compose_config("prepare", [f"dataset={dataset}", f"src={src}", f"out={out}", "workers=1", *extra])
    return run(cfg)


def ids(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.iterdir())


def test_voc_train_aug_is_sbd_plus_voc_train_minus_val(tmp_path):
    expected = make_voc(tmp_path / "dl")
    out = tmp_path / "data"
    result = prepare("voc", tmp_path / "dl", out, f"sbd={tmp_path / 'dl' / 'benchmark_RELEASE'}")
    root = out / "VOC2012"
    for split, want in expected.items():
        assert ids(root / split / "image") == want, split
        assert ids(root / split / "xml") == want
    assert not (root / "test" / "mask").exists()
    assert ids(root / "train_aug" / "mask") == expected["train_aug"]
    assert result["splits"]["train_aug"]["written"] == 4
    voc = tmp_path / "dl" / "VOCdevkit" / "VOC2012"
    # a has both labels: VOC's hand-drawn PNG wins; e comes from SBD's .mat
    np.testing.assert_array_equal(read_label_png(root / "train_aug" / "mask" / "a.png"),
                                  read_label_png(voc / "SegmentationClass" / "a.png"))
    from scipy.io import loadmat

    sbd_e = loadmat(tmp_path / "dl/benchmark_RELEASE/dataset/cls/e.mat", squeeze_me=True, struct_as_record=False)
    np.testing.assert_array_equal(read_label_png(root / "train_aug" / "mask" / "e.png"), sbd_e["GTcls"].Segmentation)
    # tags: the official XML verbatim (its <part> names ignored); e has none, so its mask's classes
    assert (root / "validation" / "xml" / "d.xml").read_bytes() == (voc / "Annotations" / "d.xml").read_bytes()
    assert read_xml_names(root / "validation" / "xml" / "d.xml") == ["bird", "tvmonitor"]
    assert read_xml_names(root / "train_aug" / "xml" / "e.xml") == ["car"]
    assert json.loads((root / "VOC2012.json").read_text())["names"] == VOC_CLASSES
    with Image.open(root / "train_aug" / "mask" / "b.png") as m:
        assert m.mode == "P"


def test_voc_split_sizes_warn_or_fail_with_strict(tmp_path, caplog):
    make_voc(tmp_path / "dl")
    sbd = f"sbd={tmp_path / 'dl' / 'benchmark_RELEASE'}"
    with pytest.raises(DHRError, match=r"train_aug: 4 images, the official release has 10582"):
        prepare("voc", tmp_path / "dl", tmp_path / "strict", sbd, "strict=true")
    assert not (tmp_path / "strict" / "VOC2012" / "train_aug").exists()  # fails before writing
    prepare("voc", tmp_path / "dl", tmp_path / "data", sbd)
    assert "split sizes differ from the official ones" in caplog.text


def test_voc_without_sbd_names_the_fix_and_converts_the_rest(tmp_path):
    make_voc(tmp_path / "dl")
    with pytest.raises(DHRError, match="sbd=DIR"):
        prepare("voc", tmp_path / "dl", tmp_path / "data")
    prepare("voc", tmp_path / "dl", tmp_path / "data", "splits=[validation]")
    assert ids(tmp_path / "data" / "VOC2012" / "validation" / "image") == ["c", "d"]


def test_rgb_colour_labels_are_refused_by_name_and_the_rest_converts(tmp_path):
    make_voc(tmp_path / "dl")
    bad = tmp_path / "dl" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "c.png"
    Image.open(bad).convert("RGB").save(bad)
    with pytest.raises(DHRError, match=r"1 of 2 images could not be converted[\s\S]*c\.png: label image has mode 'RGB'"):
        prepare("voc", tmp_path / "dl", tmp_path / "data", "splits=[validation]")
    assert ids(tmp_path / "data" / "VOC2012" / "validation" / "mask") == ["d"]


def test_prepare_resumes_keeping_finished_files_and_overwrite_rewrites(tmp_path):
    make_voc(tmp_path / "dl")
    args = ("voc", tmp_path / "dl", tmp_path / "data", "splits=[validation]")
    prepare(*args)
    kept = tmp_path / "data" / "VOC2012" / "validation" / "mask" / "c.png"
    lost = tmp_path / "data" / "VOC2012" / "validation" / "xml" / "d.xml"
    before = kept.stat().st_mtime_ns
    lost.unlink()  # as if the first run was killed before d was complete
    again = prepare(*args)
    assert again["splits"]["validation"] == {"written": 1, "kept": 1, "failed": 0}
    assert kept.stat().st_mtime_ns == before and lost.is_file()
    assert prepare(*args, "overwrite=true")["splits"]["validation"]["written"] == 2


def test_prepare_never_writes_into_its_source_even_through_a_link(tmp_path):
    make_voc(tmp_path / "dl")
    with pytest.raises(DHRError, match="overlaps the source"):
        prepare("voc", tmp_path / "dl", tmp_path / "dl" / "converted", "splits=[validation]")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "VOC2012").symlink_to(tmp_path / "dl" / "VOCdevkit" / "VOC2012")
    with pytest.raises(DHRError, match="overlaps the source"):
        prepare("voc", tmp_path / "dl", tmp_path / "data", "splits=[validation]")
    assert not (tmp_path / "dl" / "VOCdevkit" / "VOC2012" / "validation").exists()


def test_a_corrupt_sbd_file_is_named_and_the_others_convert(tmp_path):
    make_voc(tmp_path / "dl")
    (tmp_path / "dl/benchmark_RELEASE/dataset/cls/f.mat").write_bytes(b"MATLAB 5.0 truncated")
    with pytest.raises(DHRError, match=r"1 of 4 images could not be converted[\s\S]*f\.mat"):
        prepare("voc", tmp_path / "dl", tmp_path / "data", f"sbd={tmp_path / 'dl/benchmark_RELEASE'}", "splits=[train_aug]")
    assert ids(tmp_path / "data" / "VOC2012" / "train_aug" / "mask") == ["a", "b", "e"]


def test_coco_masks_overlap_rule_crowd_and_rle(tmp_path):
    shapes = make_coco(tmp_path / "coco")
    prepare("coco", tmp_path / "coco", tmp_path / "data")
    root = tmp_path / "data" / "COCO2014"
    assert ids(root / "train" / "image") == ["COCO_train2014_000000000001", "COCO_train2014_000000000002"]
    label = read_label_png(root / "train" / "mask" / "COCO_train2014_000000000001.png")
    person, car, dog = 1, 3, 17  # indices in dataset.classes (dog is COCO id 18)
    assert (label[10:20, 20:30] == dog).all()   # the small dog stays on top of the person
    assert (label[3:10, 12:38] == person).all()
    assert (label[shapes["crowd"] & (label != person)] == car).all() and (label == car).any()
    assert (label[30:32, 10:20] == person).all()  # the crowd of cars lies beneath the single person
    assert read_xml_names(root / "train" / "xml" / "COCO_train2014_000000000001.xml") == ["car", "dog", "person"]
    empty = read_label_png(root / "train" / "mask" / "COCO_train2014_000000000002.png")
    assert (empty == 0).all() and read_xml_names(root / "train" / "xml" / "COCO_train2014_000000000002.xml") == []
    bike = read_label_png(root / "validation" / "mask" / "COCO_val2014_000000000003.png")
    np.testing.assert_array_equal(bike == 2, shapes["bike"])  # compressed RLE decodes exactly


def test_coco_area_rule_does_not_depend_on_the_json_order(tmp_path):
    make_coco(tmp_path / "coco", dog_first=False)
    prepare("coco", tmp_path / "coco", tmp_path / "data", "splits=[train]")
    label = read_label_png(tmp_path / "data/COCO2014/train/mask/COCO_train2014_000000000001.png")
    assert (label[10:20, 20:30] == 17).all()  # listed after the person, the small dog still stays on top


def test_a_resumed_conversion_with_other_options_is_refused(tmp_path):
    make_coco(tmp_path / "coco")
    prepare("coco", tmp_path / "coco", tmp_path / "data", "splits=[validation]")
    with pytest.raises(DHRError, match=r"converted with other options \(coco=\{'overlap': 'area'"):
        prepare("coco", tmp_path / "coco", tmp_path / "data", "splits=[validation]", "coco.overlap=json")
    prepare("coco", tmp_path / "coco", tmp_path / "data", "splits=[validation]", "coco.overlap=json", "overwrite=true")


def test_coco_json_order_and_crowd_ignore_switches(tmp_path):
    shapes = make_coco(tmp_path / "coco", dog_first=False)
    prepare("coco", tmp_path / "coco", tmp_path / "data", "coco.overlap=json", "coco.crowd=ignore", "splits=[train]")
    label = read_label_png(tmp_path / "data/COCO2014/train/mask/COCO_train2014_000000000001.png")
    assert (label[10:20, 20:30] == 1).all()  # the person, listed first, keeps its pixels over the dog
    assert (label[shapes["crowd"] & (label != 1)] == 255).all()


def test_ade_reduces_the_zero_label(tmp_path):
    make_ade(tmp_path / "ade")
    prepare("ade", tmp_path / "ade", tmp_path / "data")
    label = read_label_png(tmp_path / "data/ADE2016/train/mask/ADE_train_00000001.png")
    assert set(np.unique(label).tolist()) == {0, 149, 255}
    assert (label[:10] == 0).all() and (label[20:, :10] == 149).all()
    assert read_xml_names(tmp_path / "data/ADE2016/validation/xml/ADE_val_00000001.xml") == ["flag", "wall"]


def test_stuff_numbers_the_used_ids_in_order(tmp_path):
    make_stuff(tmp_path / "stuff")
    prepare("stuff", tmp_path / "stuff", tmp_path / "data")
    label = read_label_png(tmp_path / "data/COCO-Stuff/validation/mask/000000000139.png")
    assert (label[:10] == 0).all() and (label[10:20] == 11).all() and (label[20:, :20] == 170).all()
    assert (label[20:, 20:] == 255).all()
    names = read_xml_names(tmp_path / "data/COCO-Stuff/validation/xml/000000000139.xml")
    assert names == ["person", "stop sign", "wood"]


def test_unknown_dataset_names_the_convertible_ones(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DHRError, match="dataset=voc"):
        prepare("synthetic", tmp_path / "src", tmp_path / "data")


def test_context_keeps_the_59_classes_by_name_and_ignores_the_rest(tmp_path):
    make_context(tmp_path / "ctx")
    prepare("context", tmp_path / "ctx", tmp_path / "data")
    root = tmp_path / "data" / "PascalContext"
    assert ids(root / "train" / "image") == ["2008_000002"] and ids(root / "validation" / "image") == ["2008_000003"]
    label = read_label_png(root / "train" / "mask" / "2008_000002.png")
    assert (label[:10] == 0).all()        # aeroplane (labels.txt id 2) is class 0
    assert (label[10:20] == 10).all()     # table (397) is class 10, where 59_labels.txt says diningtable
    assert (label[20:] == 255).all()      # accordion (1), not one of the 59, and unlabeled 0 are ignored
    assert read_xml_names(root / "train" / "xml" / "2008_000002.xml") == ["aeroplane", "table"]


def test_the_command_line_prints_usage_and_exits_2_on_a_missing_source(tmp_path, capsys):
    from dhr.prepare import main

    main(["--help"])
    assert "dataset=voc src=VOCdevkit_parent sbd=benchmark_RELEASE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset=voc", f"src={tmp_path / 'missing'}", f"out={tmp_path / 'data'}"])
    assert exit_info.value.code == 2 and "missing: folder not found" in capsys.readouterr().err
