"""Config nodes as validated dataclasses, with ``conf/`` the only place a default lives.

A node of the Hydra tree (``model.dhr``, ``crf``) maps 1:1 onto a frozen dataclass with no field
defaults; :func:`from_mapping` builds it (nested dataclasses too), refusing unknown and missing
keys with a :class:`~dhr.errors.DHRError` that names the key. :func:`conf_node` reads a node's
defaults straight from the YAML file, for code that runs outside Hydra (tests, benchmarks).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from dhr.conf_path import CONFIG_DIR
from dhr.errors import DHRError

T = TypeVar("T")


def conf_node(relpath: str, key: str | None = None) -> dict[str, Any]:
    """The plain dict at ``key`` (dotted) of ``conf/<relpath>``, unresolved interpolations left out."""
    from omegaconf import OmegaConf

    node: Any = OmegaConf.load(CONFIG_DIR / relpath)
    for part in (key.split(".") if key else []):
        node = node[part]
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied, nested mappings merged key by key."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """``cls(**data)`` for a dataclass, recursing into dataclass-typed fields; ``where`` prefixes key names."""
    if not isinstance(data, Mapping):
        raise DHRError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DHRError(f"{where}.{unknown[0]}: unknown setting; the keys are {sorted(fields)}")
    missing = sorted(set(fields) - set(data))
    if missing:
        raise DHRError(f"{where}.{missing[0]}: missing (every key of {where} needs a value; see conf/)")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_mapping(hint, value, f"{where}.{name}")
        values[name] = value
    return cls(**values)
