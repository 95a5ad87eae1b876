"""Where the Hydra configs live: ``dhr/conf`` in an installed package, ``conf/`` in a checkout.

The repository keeps ``conf/`` at the top level; ``pyproject.toml`` maps it into the package
(``dhr.conf``), so a plain ``pip install .`` carries the configs and runs from any directory.
"""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "conf"
