"""Where the Hydra configs live: ``conf/`` at the repository root (editable install)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
