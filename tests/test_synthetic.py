"""The generated default dataset: deterministic, valid, and showing the two problems DHR targets."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest
from conftest import TINY_SYNTH
from PIL import Image

from dhr.data.layout import DatasetInfo, DatasetLayout
from dhr.data.synthetic import FAMILY_COLOURS, SYNTH_CLASSES, generate, render
from dhr.errors import DHRError


def test_generation_is_deterministic_and_valid(synth_root, tmp_path):
    again = generate(tmp_path, "SYNTH", progress=False, **TINY_SYNTH)
    first = synth_root / "SYNTH"
    for sub in ("train/image", "train/mask", "validation/xml"):
        cmp = filecmp.dircmp(first / sub, again / sub)
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    layout = DatasetLayout(synth_root, DatasetInfo(name="SYNTH", classes=SYNTH_CLASSES, splits={"val": "validation"}, background_id=0))
    assert len(layout.validate("train", tags=True)) == TINY_SYNTH["num_train"]
    assert len(layout.validate("val", tags=True)) == TINY_SYNTH["num_val"]


def test_existing_folder_with_other_parameters_is_never_overwritten(synth_root):
    with pytest.raises(DHRError, match="delete the folder to regenerate"):
        generate(synth_root, "SYNTH", progress=False, **{**TINY_SYNTH, "num_train": 5})


def _class_stats(n: int = 300):
    """Mean colour and a texture statistic per class over many rendered images."""
    colours = {c: [] for c in range(len(SYNTH_CLASSES))}
    sizes = {c: [] for c in range(len(SYNTH_CLASSES))}
    touching = []
    for i in range(n):
        image, label, _ = render(np.random.default_rng([7, i]), 120, 136)
        for c in np.unique(label):
            m = label == c
            colours[c].append(image[m].mean(0))
            sizes[c].append(m.sum())
        for minor in (7, 8):
            m = label == minor
            if m.any():
                grown = m.copy()
                grown[1:] |= m[:-1]
                grown[:-1] |= m[1:]
                grown[:, 1:] |= m[:, :-1]
                grown[:, :-1] |= m[:, 1:]
                neighbours = set(np.unique(label[grown & ~m]).tolist())
                touching.append(bool(neighbours & {1, 2, 3, 4, 5, 6}))
    return ({c: np.mean(v, 0) for c, v in colours.items() if v}, {c: np.median(v) for c, v in sizes.items() if v}, touching)


def test_families_share_colour_and_minor_objects_are_small_and_adjacent():
    colours, sizes, touching = _class_stats()
    for a, b in ((1, 2), (3, 4), (5, 6)):  # same family: same mean colour
        assert np.abs(colours[a] - colours[b]).max() < 12
    for a, b in ((1, 3), (1, 5), (3, 5)):  # different families: far apart
        assert np.abs(colours[a] - colours[b]).max() > 60
    large = np.median([sizes[c] for c in range(1, 7)])
    assert sizes[7] < large / 8 and sizes[8] < large / 8
    assert np.mean(touching) > 0.9  # minor objects sit on the boundary of a large object
    assert set(FAMILY_COLOURS) == {"warm", "cool", "leaf"}


def test_xml_tags_match_mask_classes(synth_root):
    info = DatasetInfo(name="SYNTH", classes=SYNTH_CLASSES, background_id=0)
    layout = DatasetLayout(synth_root, info)
    tags = layout.read_tags("train")
    for image_id, ids in tags.items():
        mask = np.asarray(Image.open(layout.mask_path("train", image_id)))
        assert tuple(int(c) for c in np.unique(mask) if c != 0) == ids


def test_object_radii_are_parameters_and_old_stamps_still_match(tmp_path):
    import json

    small = generate(tmp_path, "A", progress=False, **TINY_SYNTH)
    stamp = json.loads((small / ".synthetic.json").read_text())
    for key in ("large_radius", "minor_radius"):  # a folder made before the radii were parameters
        stamp.pop(key)
    (small / ".synthetic.json").write_text(json.dumps(stamp))
    assert generate(tmp_path, "A", progress=False, **TINY_SYNTH) == small
    sizes = {}
    for name, radius in (("default", (0.03, 0.05)), ("paper", (0.05, 0.08))):
        areas = []
        for i in range(60):
            _, label, _ = render(np.random.default_rng([3, i]), 200, 200, (0.25, 0.45), radius)
            areas += [int((label == c).sum()) for c in (7, 8) if (label == c).any()]
        sizes[name] = np.median(areas)
    assert 2.0 < sizes["paper"] / sizes["default"] < 3.5  # area scales with the radius squared (1.6^2 = 2.6)


def test_swallowed_seeds_lose_the_minor_objects_that_touch_a_larger_one_and_keep_the_others(tmp_path):
    import numpy as np

    from dhr.data.synthetic import MINOR_IDS, SYNTH_CLASSES, swallow_touching, write_swallowed_seeds
    from dhr.errors import DHRError
    from dhr.utils.io import read_label_png, save_label_png

    bolt, gem = MINOR_IDS
    stripes = SYNTH_CLASSES.index("warm_stripes")
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 5:25] = stripes
    label[22:28, 22:28] = bolt            # on the boundary of the stripes object: swallowed
    label[32:36, 2:6] = gem               # on background only: kept
    label[2:4, 34:36] = bolt              # a second bolt, alone: kept
    seed, swallowed, kept = swallow_touching(label)
    assert (swallowed, kept) == (1, 2)
    assert (seed[22:28, 22:28] == stripes).all() and (seed[32:36, 2:6] == gem).all() and (seed[2:4, 34:36] == bolt).all()
    assert (seed[label != bolt] == label[label != bolt]).all()  # nothing else moves
    far = label.copy()
    far[22:28, 22:28] = 0
    far[30:34, 30:34] = bolt              # 9 px from the stripes (its corner was the first bolt): beyond reach 2
    assert swallow_touching(far)[1] == 0 and (swallow_touching(far, reach=9)[0][30:34, 30:34] == stripes).all()

    masks = tmp_path / "mask"
    save_label_png(masks / "a.png", label, np.zeros((256, 3), np.uint8))
    assert write_swallowed_seeds(masks, tmp_path / "out") == (1, 1, 2)
    assert (read_label_png(tmp_path / "out" / "a.png") == seed).all()
    with pytest.raises(DHRError, match="already holds seed masks"):
        write_swallowed_seeds(masks, tmp_path / "out")
