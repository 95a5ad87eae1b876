"""Shared fixtures: tiny generated datasets and in-process config composition."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
if "DHR_CACHE_DIR" not in os.environ:  # the data-check markers of this test session, not the user's
    import tempfile

    os.environ["DHR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dhr-test-cache-")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from dhr.conf_path import CONFIG_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_SYNTH = {"num_train": 24, "num_val": 8, "min_size": 56, "max_size": 72, "seed": 0}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (24 train / 8 val images of ~64 px), generated once per session."""
    from dhr.data.synthetic import generate

    root = tmp_path_factory.mktemp("data")
    generate(root, "SYNTH", progress=False, **TINY_SYNTH)
    return root


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose a primary config the way the CLI does, with a run directory of our choosing."""
    from dhr.engine import compose_run

    GlobalHydra.instance().clear()
    return compose_run(config_name, overrides, output_dir)


# The end-to-end tests run on the CPU; DHR_TEST_ACCELERATOR=gpu runs them on a GPU (device check).
TEST_ACCELERATOR = os.environ.get("DHR_TEST_ACCELERATOR", "cpu")


def tiny_train_overrides(data_root: Path) -> list[str]:
    """Overrides that make dhr.train run in seconds on the tiny synthetic set."""
    gen = ",".join(f"{k}:{v}" for k, v in TINY_SYNTH.items())
    return [
        f"paths.data_root={data_root}",
        f"dataset.generate={{{gen}}}",
        "recipe.crop_size=48",
        "recipe.resize_long=[40,64]",
        "recipe.batch_size=4",
        "recipe.num_workers=0",
        "recipe.max_epochs=1",
        "recipe.val_every=1",
        "model.aspp_channels=16",
        "model.low_level_channels=8",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        f"trainer.accelerator={TEST_ACCELERATOR}",
        "trainer.enable_model_summary=false",
        "infer.scales=[1.0,0.5]",
        "~callbacks.progress_bar",
    ]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def model_node(option: str, overrides: list[str] | None = None) -> dict:
    """The resolved ``model`` node of ``dhr.train model=<option>`` (with its ``_target_``)."""
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={option}", *(overrides or [])])
    return OmegaConf.to_container(cfg.model, resolve=True)


def model_hparams(option: str, overrides: list[str] | None = None, **replace) -> dict:
    """What the module of ``model=<option>`` is built from (the node minus ``_target_``/``_convert_``), with
    ``replace`` on top: tests build modules from conf/, never from defaults of their own."""
    node = model_node(option, overrides)
    for key in ("_target_", "_convert_"):
        node.pop(key, None)
    return {**node, **replace}


@pytest.fixture(scope="session")
def dhr_inputs(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Erased-minor seeds and random 6-d 'USS' maps of the exporter's shape (patch 8)."""
    import json

    import torch

    from dhr.data.synthetic import write_erased_seeds
    from dhr.data.uss import feature_grid
    from dhr.utils.io import read_rgb
    wss = tmp_path_factory.mktemp("wss")
    seeds = wss / "SYNTH" / "ERASED" / "train"
    assert write_erased_seeds(synth_root / "SYNTH" / "train" / "mask", seeds) == 24
    uss = synth_root / "SYNTH" / "train" / "CAUSE_TEST"
    uss.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for image in sorted((synth_root / "SYNTH" / "train" / "image").glob("*")):
        with read_rgb(image) as im:
            h, w = im.height, im.width
        torch.save(torch.randn(6, *feature_grid(h, w, 8), generator=g).half(), uss / f"{image.stem}.pt")
    (uss / "manifest.json").write_text(json.dumps({"patch": 8}))
    return seeds, uss


def dhr_overrides(synth_root: Path, seeds: Path, *extra: str) -> list[str]:
    """``model=dhr`` on the tiny set with the erased seeds and the test USS maps."""
    return [*tiny_train_overrides(synth_root), "experiment=synthetic_dhr", "wss=folder", f"wss.path={seeds}", "model.dhr.uss_name=CAUSE_TEST",
            "crf.processes=1", "model.dhr.tau=0.0", *extra]  # tau 0: every class pair forms a Step-3 group




def predict_overrides(data_root: Path, ckpt: Path, *extra: str) -> list[str]:
    """``dhr.predict`` of ``ckpt`` on the tiny synthetic set, single scale, in this process."""
    return [f"paths.data_root={data_root}", f"ckpt={ckpt}", "infer.scales=[1.0]", f"trainer.accelerator={TEST_ACCELERATOR}",
            "data.num_workers=0", "dataset.generate=null", *extra]


def tiny_mask2former_overrides(data_root: Path) -> list[str]:
    """``dhr.train model=mask2former`` on the tiny synthetic set: a 32-d decoder, 6 queries, 3 layers."""
    deeplab_only = ("model.aspp_channels", "model.low_level_channels")
    return [*(o for o in tiny_train_overrides(data_root) if not o.startswith(deeplab_only)),
            "model=mask2former", "model.num_queries=6", "model.dec_layers=3", "model.hidden_dim=32",
            "model.mask_dim=32", "model.enc_layers=1", "model.dim_feedforward=64", "model.enc_dim_feedforward=64",
            "model.nheads=2", "model.train_num_points=400", "recipe.crop_size=64"]
