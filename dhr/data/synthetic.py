"""The embedded default dataset: generated, deterministic, in the official DHR tree format.

It is built to show the two failure modes DHR targets:

* **families**: pairs of classes with the same colour that differ only in texture (stripes vs
  checks). Colour-driven unsupervised features group them; class-aware features split them.
* **minor objects**: small ``bolt`` and ``gem`` objects sitting on the boundary of large objects
  of another class, the regions that seed expansion swallows.

Each image is rendered from its own seed (``[seed, split, index]``), so any subset can be
regenerated identically. The tree is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dhr.data.palette import make_palette
from dhr.data.tags import write_xml
from dhr.errors import DHRError
from dhr.utils.io import atomic_write_json, encode_label_png

GENERATOR_VERSION = 1
SYNTH_CLASSES = (
    "background",
    "warm_stripes", "warm_checks",
    "cool_stripes", "cool_checks",
    "leaf_stripes", "leaf_checks",
    "bolt", "gem",
)
FAMILY_COLOURS = {"warm": (205, 95, 55), "cool": (60, 105, 200), "leaf": (75, 160, 70)}
MINOR_COLOURS = {"bolt": (235, 215, 45), "gem": (200, 60, 205)}
LARGE_IDS = (1, 2, 3, 4, 5, 6)
MINOR_IDS = (7, 8)
LARGE_RADIUS = (0.16, 0.32)  # of the short side: the quick default's geometry
MINOR_RADIUS = (0.03, 0.05)
SPLIT_CODES = {"train": 0, "validation": 1}
STAMP = ".synthetic.json"


def _texture(cls: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float texture of a large class: family colour, stripes or checks around it."""
    name = SYNTH_CLASSES[cls]
    family, pattern = name.split("_")
    base = np.array(FAMILY_COLOURS[family], dtype=np.float32) + rng.normal(0, 8, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if pattern == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(5.0, 8.0)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        sign = np.sign(np.sin(phase + rng.uniform(0, 2 * np.pi)))
    else:
        cell = int(rng.integers(2, 4))
        sign = np.where(((yy // cell + xx // cell) % 2) == 0, 1.0, -1.0)
    return base[None, None, :] + 45.0 * sign[..., None]


def _shape_mask(h: int, w: int, cy: float, cx: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """A random ellipse or star-convex polygon as an (h, w) bool mask."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if rng.random() < 0.5:
        ry = r * rng.uniform(0.6, 1.0)
        rx = r * rng.uniform(0.6, 1.0)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = r * rng.uniform(0.6, 1.0, n)
        draw.polygon([(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii, strict=True)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _boundary(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render(rng: np.random.Generator, min_size: int, max_size: int, large_radius: tuple[float, float] = LARGE_RADIUS,
           minor_radius: tuple[float, float] = MINOR_RADIUS) -> tuple[np.ndarray, np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image: (H, W, 3) uint8, (H, W) uint8 labels, and [(class name, box xyxy)].

    Object radii are fractions of the image's short side, drawn uniformly from the ranges.
    """
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    grey = rng.uniform(95, 165)
    low = Image.fromarray(rng.normal(0, 1, (5, 5)).astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    image = grey + 18.0 * np.asarray(low)[..., None] + rng.normal(0, 6, 3)[None, None, :]
    image = np.broadcast_to(image, (h, w, 3)).copy()
    label = np.zeros((h, w), dtype=np.uint8)
    instance = np.zeros((h, w), dtype=np.int32)
    classes: list[int] = []
    large_masks = []

    n_large = int(rng.choice([0, 1, 2, 3], p=[0.03, 0.37, 0.4, 0.2]))
    side = min(h, w)
    for _ in range(n_large):
        cls = int(rng.choice(LARGE_IDS))
        r = side * rng.uniform(*large_radius)
        m = _shape_mask(h, w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, r, rng)
        image[m] = _texture(cls, h, w, rng)[m]
        label[m] = cls
        classes.append(cls)
        instance[m] = len(classes)
        large_masks.append(m)

    for m in large_masks:
        edge = np.argwhere(_boundary(m & (instance > 0)))
        if edge.size == 0 or rng.random() > 0.75:
            continue
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = edge[rng.integers(len(edge))]
            cls = int(rng.choice(MINOR_IDS))
            r = side * rng.uniform(*minor_radius)
            canvas = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(canvas)
            if cls == MINOR_IDS[0]:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
            else:
                draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=1)
            sm = np.asarray(canvas, dtype=bool)
            colour = np.array(MINOR_COLOURS[SYNTH_CLASSES[cls]], dtype=np.float32) + rng.normal(0, 6, 3)
            image[sm] = colour
            label[sm] = cls
            classes.append(cls)
            instance[sm] = len(classes)

    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    objects = []
    for k, cls in enumerate(classes, start=1):
        ys, xs = np.nonzero(instance == k)
        if ys.size:
            objects.append((SYNTH_CLASSES[cls], (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    return image, label, objects


def generate(
    data_root: str | os.PathLike,
    name: str = "SYNTH",
    *,
    num_train: int = 1000,
    num_val: int = 200,
    min_size: int = 104,
    max_size: int = 152,
    large_radius: tuple[float, float] = LARGE_RADIUS,
    minor_radius: tuple[float, float] = MINOR_RADIUS,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Create ``{data_root}/{name}`` once; reuse it when it was made with the same parameters.

    A folder made with other parameters (or by hand) is never overwritten: that is an error
    telling the user to move it or to change ``dataset.name``.
    """
    params = dict(version=GENERATOR_VERSION, num_train=num_train, num_val=num_val,
                  min_size=min_size, max_size=max_size, seed=seed,
                  large_radius=[float(v) for v in large_radius], minor_radius=[float(v) for v in minor_radius])
    root = Path(data_root) / name
    if root.exists():
        _check_stamp(root, params)
        return root
    Path(data_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(data_root) / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    palette = make_palette("voc", len(SYNTH_CLASSES))
    splits = {"train": num_train, "validation": num_val}
    total = num_train + num_val
    bar = _progress(total, f"generating synthetic dataset in {root}") if progress else None
    try:
        for split, count in splits.items():
            for sub in ("image", "mask", "xml"):
                (tmp / split / sub).mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
                image, label, objects = render(rng, min_size, max_size, tuple(large_radius), tuple(minor_radius))
                image_id = f"{split[:2]}_{index:05d}"
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="JPEG", quality=92)
                (tmp / split / "image" / f"{image_id}.jpg").write_bytes(buf.getvalue())
                (tmp / split / "mask" / f"{image_id}.png").write_bytes(encode_label_png(label, palette))
                write_xml(tmp / split / "xml" / f"{image_id}.xml", filename=f"{image_id}.jpg",
                          size=label.shape, objects=objects)
                if bar is not None:
                    bar.update(1)
        (tmp / f"{name}.json").write_text(json.dumps({"names": list(SYNTH_CLASSES), "ignore": 255}, indent=1))
        atomic_write_json(tmp / STAMP, params)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():  # another process may have won the race; otherwise re-raise
                raise
            _check_stamp(root, params)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_stamp(root: Path, params: Mapping[str, Any]) -> None:
    stamp = root / STAMP
    try:
        found = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        raise DHRError(
            f"{root} exists but was not made by the synthetic generator (no {STAMP}); move it "
            "away or set dataset.name to another folder"
        ) from None
    if isinstance(found, dict):  # folders made before the radii were parameters used the defaults
        found = {"large_radius": list(LARGE_RADIUS), "minor_radius": list(MINOR_RADIUS), **found}
    if found != dict(params):
        raise DHRError(
            f"{root} was generated with {found}, not the requested {dict(params)}; delete the "
            "folder to regenerate it, or set dataset.name to keep both"
        )


def _progress(total: int, desc: str) -> Any:
    from dhr.utils.progress import Progress

    return Progress(total, desc)


def generate_from_cfg(data_root: str | os.PathLike, dataset_cfg: Mapping[str, Any]) -> Path | None:
    """Generate the dataset a config describes when it has a ``generate`` section."""
    spec = dataset_cfg.get("generate")
    if not spec:
        return None
    if tuple(dataset_cfg["classes"]) != SYNTH_CLASSES:
        raise DHRError(f"dataset {dataset_cfg['name']}: a generated dataset must list the classes {SYNTH_CLASSES}")
    return generate(data_root, str(dataset_cfg["name"]), **dict(spec))


def _rewrite_masks(mask_dir: str | os.PathLike, out_dir: str | os.PathLike, rewrite: Callable[[np.ndarray], np.ndarray],
                   overwrite: bool) -> int:
    """Each GT mask of ``mask_dir`` through ``rewrite`` into ``out_dir`` (palette PNGs, atomic); refuses a
    non-empty ``out_dir`` unless ``overwrite``. Returns the number of masks written."""
    from dhr.utils.io import read_label_png, save_label_png

    src, dst = Path(mask_dir), Path(out_dir)
    if not src.is_dir():
        raise DHRError(f"{src}: GT mask folder not found (generate the dataset first, e.g. python -m dhr.doctor)")
    if dst.is_dir() and any(dst.glob("*.png")) and not overwrite:
        raise DHRError(f"{dst} already holds seed masks; pass overwrite=True or choose another folder")
    palette = make_palette("voc", len(SYNTH_CLASSES))
    count = 0
    for path in sorted(src.glob("*.png")):
        save_label_png(dst / path.name, rewrite(read_label_png(path)), palette)
        count += 1
    return count


def write_erased_seeds(mask_dir: str | os.PathLike, out_dir: str | os.PathLike, classes: tuple[int, ...] = MINOR_IDS,
                       fill: int = 0, overwrite: bool = False) -> int:
    """Seeds that lost the minor objects: GT masks with ``classes`` set to ``fill`` (background).

    The controlled case of DHR's problem: a WSS method whose seeds swallowed every small object.
    """
    def erase(label: np.ndarray) -> np.ndarray:
        out = label.copy()
        out[np.isin(out, classes)] = fill
        return out

    return _rewrite_masks(mask_dir, out_dir, erase, overwrite)


def swallow_touching(label: np.ndarray, classes: tuple[int, ...] = MINOR_IDS, reach: int = 2,
                     background: int = 0) -> tuple[np.ndarray, int, int]:
    """Each object of ``classes`` that touches (within ``reach`` px) an object of another foreground class
    takes that class (the most frequent one around it); objects with only background around them stay.

    The failure of seed expansion that DHR exists to fix (random-walk / affinity propagation lets a
    large object's label flood a small one it touches), where it happens and nowhere else.
    Returns the seed mask, the number of swallowed and of kept objects.
    """
    from scipy import ndimage

    out = label.copy()
    swallowed = kept = 0
    structure = ndimage.generate_binary_structure(2, 2)
    for cls in classes:
        components, n = ndimage.label(label == cls, structure=structure)
        for k in range(1, n + 1):
            obj = components == k
            ring = ndimage.binary_dilation(obj, structure=structure, iterations=reach) & ~obj
            around = label[ring]
            around = around[(around != background) & ~np.isin(around, classes) & (around < len(SYNTH_CLASSES))]
            if around.size:
                out[obj] = np.bincount(around).argmax()
                swallowed += 1
            else:
                kept += 1
    return out, swallowed, kept


def write_swallowed_seeds(mask_dir: str | os.PathLike, out_dir: str | os.PathLike, classes: tuple[int, ...] = MINOR_IDS,
                          reach: int = 2, overwrite: bool = False) -> tuple[int, int, int]:
    """Seeds that lost the minor objects where they touch larger ones (:func:`swallow_touching` on each GT mask).

    Returns (masks written, objects swallowed, objects kept).
    """
    tally = [0, 0]

    def rewrite(label: np.ndarray) -> np.ndarray:
        seed, swallowed, kept = swallow_touching(label, classes, reach)
        tally[0] += swallowed
        tally[1] += kept
        return seed

    return _rewrite_masks(mask_dir, out_dir, rewrite, overwrite), tally[0], tally[1]
