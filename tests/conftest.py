"""Shared fixtures: tiny generated datasets, in-process config composition and command lines, and the
tiny models trained once per session that many tests read.

Every training test runs timm's ``test_resnet`` (0.37 M parameters) with narrow heads: a checkpoint
is about 1 MB. A session fixture's run folder is shared: a test that changes a run works on a copy
(:func:`copy_run`).
"""

from __future__ import annotations

import os
from pathlib import Path

# One CPU thread per test process: the tiny models run no slower so, and the tests that fork this process
# (DDP with forked ranks, a training run killed by SIGKILL) would deadlock in the child's OpenMP pool otherwise.
# Subprocesses inherit it, so a run in another interpreter computes exactly as one in this process.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
if "DHR_CACHE_DIR" not in os.environ:  # the data-check markers of this test session, not the user's
    import tempfile

    os.environ["DHR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dhr-test-cache-")

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from dhr.conf_path import CONFIG_DIR  # noqa: E402

if "torch" in sys.modules:  # imported before this file (a plugin): the environment variable came too late
    sys.modules["torch"].set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (real VOC/COCO/ADE samples) not present")
TINY_SYNTH = {"num_train": 24, "num_val": 8, "min_size": 56, "max_size": 72, "seed": 0}
DEV_ONLY = ("dhr_reference", "conftest", "tests", "scripts", "pytest", "cv2", "ot")  # what `pip install dhr` lacks
GENERATE = "dataset.generate={" + ",".join(f"{k}:{v}" for k, v in TINY_SYNTH.items()) + "}"


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


# The end-to-end tests run on the CPU; DHR_TEST_ACCELERATOR=gpu runs them on a GPU (make gpu-check).
TEST_ACCELERATOR = os.environ.get("DHR_TEST_ACCELERATOR", "cpu")
TEST_PRECISION = os.environ.get("DHR_TEST_PRECISION")  # e.g. 16-mixed on a GPU

TINY_HEADS = ("model.aspp_channels=16", "model.low_level_channels=8", "model.decoder_channels=16")


def tiny_train_overrides(data_root: Path) -> list[str]:
    """Overrides that make dhr.train run in a second or two on the tiny synthetic set."""
    return [
        f"paths.data_root={data_root}",
        GENERATE,
        "backbone=test_resnet",
        "recipe.crop_size=48",
        "recipe.resize_long=[40,64]",
        "recipe.batch_size=4",
        "recipe.num_workers=0",
        "recipe.max_epochs=1",
        "recipe.val_every=1",
        *TINY_HEADS,
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        f"trainer.accelerator={TEST_ACCELERATOR}",
        *([f"trainer.precision={TEST_PRECISION}"] if TEST_PRECISION else []),
        "trainer.enable_model_summary=false",
        "infer.scales=[1.0,0.5]",
        "~callbacks.progress_bar",
    ]


# trainer=ddp_cpu (2 gloo processes) with forked ranks: the DDP arithmetic of trainer=ddp_cpu in a second or two,
# where spawned ranks re-import torch and Lightning (~5 s each). The spawned ranks users run are proven by the
# SIGKILL-and-resume test of tests/test_exact_resume.py, which runs trainer=ddp_cpu as it is.
DDP_FORK = ("trainer=ddp_cpu", "trainer.strategy=ddp_fork")


def without(overrides: list[str], *prefixes: str) -> list[str]:
    """``overrides`` minus those starting with any of ``prefixes`` (e.g. the DeepLab heads for model=cam)."""
    return [o for o in overrides if not o.startswith(prefixes)]


# CAUSE on the tiny set: a 1-block 16-d ViT, one epoch per stage (the uss stage of the tiny pipeline too)
TINY_CAUSE = ["experiment=synthetic_cause", "model.eval_crf=false", "backbone.embed_dim=16", "backbone.depth=1",
              "model.num_concepts=16", "model.reduced_dim=8", "model.projection_dim=16", "model.ffn_dim=16",
              "model.resolution=64", "model.bank_length=4", "data.batch_size=4", "data.num_workers=0",
              "model.report_kmeans_seeds=1", "stage_epochs={clusterbook:1,head:1,probe:1}"]


def tiny_cause_overrides(data_root: Path) -> list[str]:
    """``dhr.train model=cause`` on the tiny set (no CRF in its evaluation)."""
    return [*without(tiny_train_overrides(data_root), "model.", "infer.", "backbone="), "model=cause",
            *without(TINY_CAUSE, "experiment=")]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _fresh_ddp_port(monkeypatch):
    """An in-process DDP fit leaves MASTER_PORT set: the next one must pick a free port of its own."""
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)


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


def make_dhr_inputs(data_root: Path, wss_root: Path) -> tuple[Path, Path]:
    """Erased-minor seeds in ``wss_root/SYNTH/ERASED/train`` and random 6-d 'USS' maps of the exporter's
    shape (patch 8) in ``data_root/SYNTH/train/CAUSE_TEST``."""
    import torch

    from dhr.data.synthetic import write_erased_seeds
    from dhr.data.uss import feature_grid
    from dhr.utils.io import read_rgb

    seeds = wss_root / "SYNTH" / "ERASED" / "train"
    assert write_erased_seeds(data_root / "SYNTH" / "train" / "mask", seeds) == TINY_SYNTH["num_train"]
    uss = data_root / "SYNTH" / "train" / "CAUSE_TEST"
    uss.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for image in sorted((data_root / "SYNTH" / "train" / "image").glob("*")):
        with read_rgb(image) as im:
            h, w = im.height, im.width
        torch.save(torch.randn(6, *feature_grid(h, w, 8), generator=g).half(), uss / f"{image.stem}.pt")
    (uss / "manifest.json").write_text(json.dumps({"patch": 8}))
    return seeds, uss


@pytest.fixture(scope="session")
def dhr_inputs(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Erased-minor seeds and random 6-d 'USS' maps of the exporter's shape (patch 8)."""
    return make_dhr_inputs(synth_root, tmp_path_factory.mktemp("wss"))


DHR_TEST = ("experiment=synthetic_dhr", "wss=folder", "model.dhr.uss_name=CAUSE_TEST", "crf.processes=1",
            "model.dhr.tau=0.0")  # tau 0: every class pair forms a Step-3 group


def dhr_overrides(synth_root: Path, seeds: Path, *extra: str) -> list[str]:
    """``model=dhr`` on the tiny set with the erased seeds and the test USS maps."""
    return [*tiny_train_overrides(synth_root), *DHR_TEST, f"wss.path={seeds}", *extra]


def predict_overrides(data_root: Path, ckpt: Path, *extra: str) -> list[str]:
    """``dhr.predict`` of ``ckpt`` on the tiny synthetic set, single scale, in this process."""
    return [f"paths.data_root={data_root}", f"ckpt={ckpt}", "infer.scales=[1.0]", f"trainer.accelerator={TEST_ACCELERATOR}",
            "data.num_workers=0", "dataset.generate=null", *extra]


def tiny_mask2former_overrides(data_root: Path) -> list[str]:
    """``dhr.train model=mask2former`` on the tiny synthetic set: a 32-d decoder, 6 queries, 3 layers."""
    return [*without(tiny_train_overrides(data_root), *TINY_HEADS),
            "model=mask2former", "model.num_queries=6", "model.dec_layers=3", "model.hidden_dim=32",
            "model.mask_dim=32", "model.enc_layers=1", "model.dim_feedforward=64", "model.enc_dim_feedforward=64",
            "model.nheads=2", "model.train_num_points=400", "recipe.crop_size=64"]


def listed(items: list[str] | tuple[str, ...]) -> str:
    """A list override's value: ``["a=1","b=2"]`` (each item quoted)."""
    return "[" + ",".join(json.dumps(o) for o in items) + "]"


TINY_STAGE = ("backbone=test_resnet",)  # the stages' own overrides: every stage but uss (CAUSE keeps its tiny ViT)


def tiny_pipeline_overrides(data_root: Path, *extra: str, dataset: str = "synthetic", drop: tuple[str, ...] = (),
                            add: tuple[str, ...] = ()) -> list[str]:
    """``dhr.pipeline`` on a tiny set: the tiny training overrides (minus ``drop`` prefixes, plus ``add``) for
    every stage, :data:`TINY_STAGE` for every stage but uss, 2 example rows in the report."""
    routed = [*without(tiny_train_overrides(data_root), "paths.", "dataset.", "backbone=", *drop), *add]
    return [f"dataset={dataset}", f"paths.data_root={data_root}", *([GENERATE] if dataset == "synthetic" else []),
            f"pipeline.extra={listed(routed)}", f"pipeline.overrides.uss={listed(TINY_CAUSE)}",
            *(f"pipeline.overrides.{stage}={listed(TINY_STAGE)}" for stage in ("seeds", "dhr", "final", "baseline", "ceiling")),
            "pipeline.examples=2", *extra]


# -- tiny models trained once per session ------------------------------------------------------------
@dataclass(frozen=True)
class TrainedRun:
    """A finished ``dhr.train`` run of a session fixture: read it, or :func:`copy_run` it to change it."""

    dir: Path
    metrics: dict[str, Any]
    stdout: str = ""
    overrides: list[str] = field(default_factory=list)

    @property
    def ckpt(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"


def train_once(tmp_path_factory: pytest.TempPathFactory, name: str, overrides: list[str]) -> TrainedRun:
    from dhr.train import run

    out = tmp_path_factory.mktemp(name) / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = run(compose_cfg("train", overrides, out))
    GlobalHydra.instance().clear()
    return TrainedRun(out, metrics, printed.getvalue(), list(overrides))


def copy_run(run: TrainedRun | Path, dst: Path) -> Path:
    """A private copy of a session fixture's run folder (checkpoints of the tiny models are ~1 MB)."""
    shutil.copytree(run.dir if isinstance(run, TrainedRun) else run, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def deeplab_run(synth_root, tmp_path_factory) -> TrainedRun:
    """DeepLabv3+ (3 steps), evaluated after the fit: last/best checkpoints, EMA, CSV log, val predictions."""
    return train_once(tmp_path_factory, "deeplab", tiny_train_overrides(synth_root))


@pytest.fixture(scope="session")
def cam_run(synth_root, tmp_path_factory) -> TrainedRun:
    """The CAM baseline (3 steps) on image-level tags."""
    return train_once(tmp_path_factory, "cam", [*without(tiny_train_overrides(synth_root), "model."), "model=cam"])


@pytest.fixture(scope="session")
def dhr_run(synth_root, dhr_inputs, tmp_path_factory) -> TrainedRun:
    """model=dhr (3 steps) on the erased seeds and the test USS maps, with the online relabelling."""
    return train_once(tmp_path_factory, "dhr", dhr_overrides(synth_root, dhr_inputs[0], "evaluate_after_fit=false"))


@pytest.fixture(scope="session")
def cause_run(synth_root, tmp_path_factory) -> TrainedRun:
    """CAUSE, one epoch of each stage (clusterbook, head, probe), k-means reported over 3 seeds."""
    overrides = [*tiny_cause_overrides(synth_root), "model.eval_crf=true", "model.report_kmeans_seeds=3"]
    return train_once(tmp_path_factory, "cause", overrides)


@pytest.fixture(scope="session")
def mask2former_run(synth_root, tmp_path_factory) -> TrainedRun:
    """Mask2Former (3 steps), evaluated after the fit."""
    return train_once(tmp_path_factory, "mask2former", tiny_mask2former_overrides(synth_root))


def resume_overrides(data_root: Path, workers: int = 0, *extra: str) -> list[str]:
    """Two epochs of 6 steps with a mid-epoch last.ckpt every 2 steps: the runs the resume tests kill and resume."""
    return [*without(tiny_train_overrides(data_root), "trainer.limit_train_batches", "recipe.max_epochs",
                     "recipe.num_workers"),
            "recipe.max_epochs=2", f"recipe.num_workers={workers}", "evaluate_after_fit=false",
            "callbacks.last_checkpoint.every_n_train_steps=2", *extra]


@pytest.fixture(scope="session")
def resume_reference(synth_root, tmp_path_factory) -> TrainedRun:
    """The uninterrupted run (one process) that every killed-and-resumed run must end equal to, bit for bit."""
    return train_once(tmp_path_factory, "whole", resume_overrides(synth_root))


@pytest.fixture(scope="session")
def pipeline_run(synth_root, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """The whole tiny pipeline, run once: (its folder, its report). Tests that change it work on a copy."""
    from dhr.pipeline import run

    out = tmp_path_factory.mktemp("pipeline") / "pipe"
    with contextlib.redirect_stdout(io.StringIO()):
        report = run(compose_cfg("pipeline", tiny_pipeline_overrides(synth_root), out))
    GlobalHydra.instance().clear()
    return out, report


# -- command lines in this process ----------------------------------------------------------------------
@dataclass(frozen=True)
class CliRun:
    """What a command printed and its exit status, as a shell would see them."""

    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def tail(self, lines: int = 30) -> str:
        """The last stderr lines: where an error message must lie (a Hydra option list is ~25 lines)."""
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])


def cli(entry: str, *args: str, umask: int | None = None) -> CliRun:
    """``python -m <entry> <args>`` run in this process: sys.argv patched, ``main()`` called, the exit status
    and both streams captured. The root logger starts without handlers, as in a new interpreter (pytest's
    are put back after), so a command's own logging set-up decides what it prints. An exception that
    escapes ``main()`` is printed as Python would print it (rc 1, a traceback on stderr), so a test tells a
    user-grade error from a crash."""
    import importlib
    import logging

    import hydra._internal.utils as hydra_utils

    module = importlib.import_module(entry)
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    argv, old_umask = sys.argv, None if umask is None else os.umask(umask)
    sys.argv = [entry, *args]
    GlobalHydra.instance().clear()
    under_debugger = hydra_utils.is_under_debugger
    hydra_utils.is_under_debugger = lambda: False  # coverage's tracer looks like one: Hydra would re-raise its errors
    rc = 0
    try:
        root.handlers, root.level = [], logging.WARNING
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                module.main()
            except SystemExit as exit_:
                code = exit_.code
                rc = code if isinstance(code, int) else (0 if code is None else 1)
                if isinstance(code, str):
                    print(code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - what the interpreter would print
                traceback.print_exc()
                rc = 1
    finally:
        sys.argv = argv
        hydra_utils.is_under_debugger = under_debugger
        if old_umask is not None:
            os.umask(old_umask)
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # the command's own: its streams and log files are finished
            with contextlib.suppress(Exception):
                handler.close()
        root.handlers, root.level = saved_handlers, saved_level
    return CliRun(rc, out.getvalue(), err.getvalue())


def in_forked_child(fn: Any) -> int:
    """Run ``fn()`` in a fork of this process (torch is imported already: no start-up cost) and wait for it.

    Returns what ``subprocess`` would: the exit code, or minus the signal that killed the child."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fn()
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
