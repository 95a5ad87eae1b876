"""The import layers of ../shared/DESIGN.md §2, checked by parsing every import (lazy ones too).

pipeline -> entry points -> engine | report -> modules | callbacks -> models | ops | data -> utils -> errors,
conf_path. A unit may import itself and any unit of a lower layer, never one of its own layer or
above; scripts and tests never import each other; the package never imports the development-only
references (``reference/``, package ``dhr_reference``) or anything of the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import DEV_ONLY, REPO

LAYERS = [
    {"dhr.pipeline"},  # runs the other entry points in order
    {"dhr.train", "dhr.predict", "dhr.evaluate", "dhr.features", "dhr.prepare", "dhr.doctor", "dhr.weights"},  # entry points: none imports another
    {"dhr.engine", "dhr.report"},  # what the entry points share; the pipeline's report
    {"dhr.modules", "dhr.callbacks"},
    {"dhr.models", "dhr.ops", "dhr.data"},
    {"dhr.utils"},
    {"dhr.errors", "dhr.conf_path"},
]
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "dhr" and len(parts) > 1 else parts[0]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def test_every_dhr_module_belongs_to_a_layer():
    units = {unit_of(module_name(p)) for p in (REPO / "dhr").rglob("*.py")} - {"dhr"}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS"


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted((REPO / "dhr").rglob("*.py")):
        me = unit_of(module_name(path))
        if me == "dhr":
            continue
        for target in imports(path):
            other = unit_of(target)
            if other not in LEVEL or other == me:
                continue
            if LEVEL[other] <= LEVEL[me]:
                wrong.append(f"{path.relative_to(REPO)} imports {target} ({me} is layer {LEVEL[me]}, {other} {LEVEL[other]})")
    assert not wrong, "\n".join(wrong)


def test_scripts_and_tests_do_not_import_each_other():
    wrong = [f"{p.relative_to(REPO)} imports {t}" for p in (REPO / "scripts").rglob("*.py") for t in imports(p)
             if t.split(".")[0] in ("tests", "conftest")]
    wrong += [f"{p.relative_to(REPO)} imports {t}" for p in (REPO / "tests").rglob("*.py") for t in imports(p)
              if t.split(".")[0] == "scripts"]
    assert not wrong, "\n".join(wrong)


def test_the_package_imports_nothing_of_the_development_set_up():
    wrong = [f"{p.relative_to(REPO)} imports {t}" for p in sorted((REPO / "dhr").rglob("*.py")) for t in imports(p)
             if t.split(".")[0] in DEV_ONLY]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dhr.modules.dhr import DHRModule\n")
    assert "dhr.modules.dhr" in imports(bad) and LEVEL[unit_of("dhr.modules.dhr")] < LEVEL["dhr.ops"]
