"""The wheel holds the product only, and a plain (non-editable) install carries the configs: every module
imports without the development set-up, and every experiment composes, from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
import tomllib
from conftest import DEV_ONLY, REPO


def test_the_package_list_covers_every_subpackage():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dhr").rglob("__init__.py")}
    assert found | {"dhr.conf"} == listed


# One process: dev-only modules refused at import, every dhr module imported, every experiment composed.
INSTALLED_CHECK = '''
import importlib, importlib.abc, pkgutil, sys
BLOCKED = set(sys.argv[1].split(","))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed with dhr (development only)")

sys.meta_path.insert(0, Refuse())
import dhr, dhr.conf_path
print("CONFIG_DIR", dhr.conf_path.CONFIG_DIR)
for info in pkgutil.walk_packages(dhr.__path__, "dhr."):
    if info.name != "dhr.conf":
        importlib.import_module(info.name)
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=str(dhr.conf_path.CONFIG_DIR), version_base="1.3"):
    for experiment in sys.argv[2].split(","):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
        assert cfg.model._target_.startswith("dhr.modules."), experiment
        print("composed", experiment)
'''


@pytest.mark.slow
def test_the_wheel_holds_the_product_and_installs_to_run_from_anywhere(tmp_path):
    import shutil

    source, wheels, target, elsewhere = (tmp_path / name for name in ("src", "wheels", "site", "elsewhere"))
    elsewhere.mkdir()
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "dhr", "conf"):  # a copy: the build writes build/ beside the source
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = wheels.glob("dhr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if n.endswith(".py")]
    assert code and all(n.startswith("dhr/") for n in code), [n for n in code if not n.startswith("dhr/")]
    assert not [n for n in names if "reference" in n or "/tests/" in n or "conftest" in n or "dense_swav" in n]
    assert "dhr/conf/train.yaml" in names and any(n.startswith("dhr/conf/experiment/") for n in names)

    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    experiments = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    done = subprocess.run([sys.executable, "-c", INSTALLED_CHECK, ",".join(DEV_ONLY), ",".join(experiments)],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"CONFIG_DIR {target / 'dhr' / 'conf'}" in done.stdout
    assert done.stdout.count("composed ") == len(experiments) > 10
    shown = subprocess.run([sys.executable, "-m", "dhr.train", "--help"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "recipe: " in shown.stdout and "crf: default" in shown.stdout
