"""Where the Hydra configs live: ``dhr/conf`` in an installed package, ``conf/`` in a checkout.

The repository keeps ``conf/`` at the top level; ``pyproject.toml`` maps it into the package
(``dhr.conf``), so a plain ``pip install .`` carries the configs and runs from any directory.
"""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def _lines(path: str | None) -> object:
    """``${dhr.lines:FILE}``: the non-empty lines of a text file (a class list, one name per line)."""
    if not path:
        raise ValueError("no class list: set dataset.classes_file=PATH (one name per line) or dataset.classes=[...]")
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise ValueError(f"dataset.classes_file={path}: file not found")
    from omegaconf import ListConfig

    # a ListConfig, not a list: OmegaConf.resolve (Hydra's instantiate) can put a container only in place
    return ListConfig([line.strip() for line in file.read_text().splitlines() if line.strip()])


def _wandb_group(default: str) -> str:
    """``${dhr.wandb_group:DEFAULT}``: the W&B group of a run: the pipeline run that started it
    (``$DHR_WANDB_GROUP``, set by ``dhr.pipeline``), else the sweep of a multirun, else DEFAULT."""
    import os

    if os.environ.get("DHR_WANDB_GROUP"):
        return os.environ["DHR_WANDB_GROUP"]
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        if hydra.mode is not None and hydra.mode.name == "MULTIRUN":
            return Path(str(hydra.sweep.dir)).name
    except ValueError:  # composed outside a Hydra run
        pass
    return default


def _register_resolvers() -> None:
    """Config helpers: ``dhr.lines``, ``dhr.count``, ``dhr.index`` (the folder dataset), ``dhr.wandb_group``."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("dhr.lines", _lines, replace=True)
    OmegaConf.register_new_resolver("dhr.wandb_group", _wandb_group, replace=True)
    OmegaConf.register_new_resolver("dhr.count", lambda items: len(items), replace=True)
    OmegaConf.register_new_resolver("dhr.index", lambda item, items: list(items).index(item) if item in items else None,
                                    replace=True)


_register_resolvers()
