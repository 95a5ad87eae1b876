"""Converters from the official dataset releases into the DHR tree (``python -m dhr.prepare``).

One module per release; each has ``plan(src, splits, ...) -> Plan`` and ``read_mask(source)``.
They are picked by the dataset's folder name (``dataset.name``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dhr.errors import DHRError

CONVERTERS = {"VOC2012": "voc", "COCO2014": "coco", "PascalContext": "context", "ADE2016": "ade", "COCO-Stuff": "stuff"}


def converter_for(dataset_name: str) -> ModuleType:
    """The converter module of a dataset folder name, or an error listing the convertible ones."""
    if dataset_name not in CONVERTERS:
        options = ", ".join(f"dataset={m}" for m in CONVERTERS.values())
        raise DHRError(f"dataset {dataset_name}: no converter from an official release; use one of {options} "
                       "(dataset=folder reads a plain folder of images without conversion)")
    return importlib.import_module(f"dhr.data.convert.{CONVERTERS[dataset_name]}")
