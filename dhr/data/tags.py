"""Image-level tags: Pascal-VOC annotation XML (``evaluation.md`` §3) and ``cls_labels.json``."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from dhr.errors import DHRError
from dhr.utils.io import atomic_write_bytes


def read_xml_names(path: str | os.PathLike) -> list[str]:
    """Sorted unique ``<object><name>`` strings of one annotation file (boxes are ignored)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DHRError(f"{path}: tag XML not found") from None
    except ET.ParseError as err:
        raise DHRError(f"{path}: malformed XML ({err}); re-export the annotation") from None
    names = {(obj.findtext("name") or "").strip() for obj in root.iter("object")}
    names.discard("")
    return sorted(names)


def write_xml(
    path: str | os.PathLike,
    *,
    filename: str,
    size: tuple[int, int],
    objects: Sequence[tuple[str, tuple[float, float, float, float]]],
) -> None:
    """Write a VOC-style annotation; ``size`` is (H, W), boxes are (xmin, ymin, xmax, ymax)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size_el = ET.SubElement(root, "size")
    ET.SubElement(size_el, "width").text = str(size[1])
    ET.SubElement(size_el, "height").text = str(size[0])
    ET.SubElement(size_el, "depth").text = "3"
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        bnd = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bnd, key).text = f"{float(value):.2f}"
    ET.indent(root)
    atomic_write_bytes(Path(path), ET.tostring(root, encoding="utf-8"))
