"""A plain (non-editable) install carries the configs: dhr-train runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tomllib
from conftest import REPO


def test_the_package_list_covers_every_subpackage():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dhr").rglob("__init__.py")}
    assert found | {"dhr.conf"} == listed


@pytest.mark.slow
def test_a_non_editable_install_composes_every_experiment_from_elsewhere(tmp_path):
    import shutil

    source, target, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "dhr", "conf"):  # a copy: the build writes build/ beside the source
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def dhr_train(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "dhr.train", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = subprocess.run([sys.executable, "-c", "import dhr.conf_path as c; print(c.CONFIG_DIR)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(target / "dhr" / "conf")
    assert "recipe: " in dhr_train("--help") and "crf: default" in dhr_train("--help")
    for experiment in sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")):
        assert "_target_" in dhr_train(f"experiment={experiment}", "--cfg", "job")
