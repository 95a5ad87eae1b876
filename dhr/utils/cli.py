"""Shared entry-point behaviour: user mistakes end as one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def worker_message(text: str) -> str:
    """The message of a DHRError raised in a DataLoader worker, without the traceback PyTorch wraps it in."""
    if text.startswith("Caught DHRError") and "DHRError: " in text:
        return text[text.rindex("DHRError: ") + len("DHRError: "):].strip()
    return text


def user_error(err: BaseException) -> str | None:
    """The one-line message of a user mistake (bad value, unset key, refused config), else None (a bug)."""
    import re

    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    from dhr.errors import DHRError

    if isinstance(err, DHRError):
        return worker_message(str(err))
    if isinstance(err, MissingMandatoryValue):  # a ??? key the command did not set
        return f"{err.full_key} is required: add {err.full_key}=... to the command"
    if isinstance(err, InstantiationException):  # a config value refused by a constructor
        cause = err.__cause__
        if isinstance(cause, DHRError):
            return str(cause)
        if isinstance(cause, (ValueError, TypeError, ImportError)) or type(cause).__name__ == "MisconfigurationException":
            found = re.search(r"full_key: (\S+)", str(err))
            node = found.group(1) if found else "the config"
            given = [o for o in _command_overrides() if o.lstrip("+~").split("=")[0] == node or
                     o.lstrip("+~").startswith(node + ".")]
            what = f"check {' '.join(given)}" if given else f"check the values under {node} (--cfg job prints them)"
            text = str(cause)
            number = re.match(r"(?:invalid literal for int\(\) with base 10|could not convert string to float): (.+)", text)
            if number:
                text = f"a number was expected, not {number.group(1)}"
            if node == "trainer" and "backend found" in text:
                what += " (without that device: trainer=cpu or trainer.accelerator=cpu)"
            return f"{node}: {text}; {what}"
    return None


def _command_overrides() -> list[str]:
    """The key=value overrides of this Hydra run's command line (empty outside a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra run (plain_main, tests)
        return []


def run_or_exit(fn: Callable[[Any], T], cfg: Any) -> T:
    """Call ``fn(cfg)``; a user mistake (:func:`user_error`) prints ``error: ...`` and exits 2 (no traceback)."""
    try:
        return fn(cfg)
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def hydra_entry(config_name: str, run: Callable[[Any], Any], returns: Callable[[Any], Any] | None = None) -> Callable[[], Any]:
    """The ``@hydra.main`` wrapper every entry point shares: compose ``conf/<config_name>.yaml``, run, map errors.

    ``returns`` picks the value handed back to Hydra (sweepers optimise it).
    """
    import hydra

    from dhr.conf_path import CONFIG_DIR

    started = False

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def _main(cfg: Any) -> Any:
        nonlocal started
        started = True
        out = run_or_exit(run, cfg)
        return returns(out) if returns is not None else None

    def entry() -> Any:
        nonlocal started
        started = False  # per call: an entry point may run more than once in one process (tests, notebooks)
        try:
            return _main()
        except SystemExit as exit_:
            if exit_.code == 1 and not started:  # Hydra refused the command line (unknown key or option)
                raise SystemExit(2) from None
            raise

    return entry


def compose_config(config_name: str, overrides: list[str]) -> Any:
    """Compose ``conf/<config_name>.yaml`` once, without Hydra's run machinery (no run directory, fast start)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dhr.conf_path import CONFIG_DIR

    if GlobalHydra.instance().is_initialized():  # inside a running entry point: its search path holds conf/
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        return compose(config_name=config_name, overrides=list(overrides))


def plain_main(config_name: str, run: Callable[[Any], T], usage: str, argv: list[str] | None = None) -> T | None:
    """``key=value`` entry point without a run directory: ``--help`` prints ``usage``, ``--cfg`` the config.

    A :class:`~dhr.errors.DHRError` or a composition error (unknown key, group option) prints one
    ``error:`` line and exits 2. Returns ``run``'s value (None for ``--help`` / ``--cfg``).
    """
    import logging

    from omegaconf import OmegaConf

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(usage)
        return None
    show = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    try:
        cfg = compose_config(config_name, argv)
        if show:
            print(OmegaConf.to_yaml(cfg))
            return None
        logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
        return run(cfg)
    except Exception as err:
        message = user_error(err)
        if message is None and type(err).__module__.startswith(("hydra", "omegaconf")):
            message = str(err)  # composition: unknown key or group option
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
