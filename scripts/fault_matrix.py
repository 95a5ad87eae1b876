#!/usr/bin/env python
"""The fault matrix: bad inputs and faults a demanding new user hits, run as real CLI subprocesses.

Every case breaks something in its own copy of a tiny generated dataset (24 train / 8 val
images), or passes a bad config value, checkpoint or output folder, runs one entry point
(``python -m dhr.train`` etc.) and classifies what came back:

* ``user-grade``: the expected outcome. Errors: the expected exit status (2, or the documented 1
  of ``dhr.evaluate`` for missing predictions), no ``Traceback`` on stderr, and the last stderr
  lines hold the case's substrings (the offending file or key and a fix). Warning cases: exit 0
  and the warning text in the output. Cases that protect files (outputs never written over
  inputs) also check their hashes before and after.
* ``traceback``: a Python traceback on stderr.
* ``silent``: exit 0 where an error was due, a warning that never came, or a wrong result.
* ``unclear``: the run failed as it should, but with another exit status or a message that lacks
  the file, the key or the fix.
* ``damaged``: files the case protects changed. ``hang``: no exit within the timeout.

The cases that need a trained model share one tiny DeepLabv3+ checkpoint (and one CAM
checkpoint, and the DeepLabv3+ predictions of the val split), made once, on first use.

    .venv/bin/python scripts/fault_matrix.py                # every case; exit 1 unless all are user-grade
    .venv/bin/python scripts/fault_matrix.py --only ckpt-   # the cases whose id contains "ckpt-"
    .venv/bin/python scripts/fault_matrix.py --keep /tmp/fm # keep the sandboxes (cases/NN: data, run, logs)

Cases run one at a time (the CLI runs are CPU-bound). See docs/fault-matrix.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

# -- the tiny dataset and the overrides that make runs fast (as tests/conftest.py::tiny_train_overrides) ----------
TINY_SYNTH = {"num_train": 24, "num_val": 8, "min_size": 56, "max_size": 72, "seed": 0}
GENERATE = "dataset.generate={" + ",".join(f"{k}:{v}" for k, v in TINY_SYNTH.items()) + "}"
TINY_TRAIN = (
    "paths.data_root={data}", GENERATE, "recipe.crop_size=48", "recipe.resize_long=[40,64]", "recipe.batch_size=4",
    "recipe.num_workers=0", "recipe.max_epochs=1", "recipe.val_every=1", "model.aspp_channels=16",
    "model.low_level_channels=8", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
    "trainer.accelerator=cpu", "trainer.enable_model_summary=false", "infer.scales=[1.0,0.5]", "~callbacks.progress_bar",
)
BASE: dict[str, tuple[str, ...]] = {  # what every command of an entry point gets (a case's own overrides win)
    "dhr.train": (*TINY_TRAIN, "hydra.run.dir={run}", "hydra.sweep.dir={case}/sweep"),
    "dhr.predict": ("paths.data_root={data}", GENERATE, "infer.scales=[1.0]", "trainer.accelerator=cpu",
                    "data.num_workers=0", "hydra.run.dir={run}"),
    "dhr.features": ("paths.data_root={data}", GENERATE, "device=cpu", "hydra.run.dir={run}"),
    "dhr.evaluate": ("paths.data_root={data}", "json={case}/scores.json"),
}
# model=dhr on the tiny set: erased-minor seeds and random 6-d "USS" maps of patch 8 (tests/conftest.py::dhr_overrides)
DHR = ("experiment=synthetic_dhr", "wss=folder", "wss.path={seeds}", "model.dhr.uss_name=CAUSE_TEST", "crf.processes=1",
       "model.dhr.tau=0.0")
DATA_FIX = "on_error=skip"  # the fix every up-front data-check error of dhr.train offers
TAIL_LINES = 30             # the stderr lines an error message must lie in (a Hydra option list is ~25)
SHOWN_LINES = 10            # stderr lines printed for a case that is not user-grade
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt)\b")  # "ValueError: ..." closing a traceback

Setup = Callable[["Sandbox"], None]
Verify = Callable[["Sandbox", "Run"], "str | None"]


@dataclass(frozen=True)
class Case:
    """One fault: the command, what it breaks first, and the outcome that counts as user-grade.

    ``argv`` is the entry point, then flags and overrides; ``{tokens}`` (see :meth:`Sandbox.tokens`)
    expand in ``argv``, ``expect``, ``protect`` and the setup's paths.
    """

    id: str
    category: str
    what: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]               # substrings of the message (last stderr lines; the whole output if rc=0)
    rc: int = 2                           # expected exit status; 0 = a warning case
    setup: Setup | None = None            # breaks the sandbox before the run
    protect: tuple[str, ...] = ()         # globs whose files must be unchanged by the run
    verify: Verify | None = None          # a further check after the run: a problem, or None
    umask: int | None = None              # the command's umask (None: inherited)

    @property
    def expected(self) -> str:
        """The expected outcome, in words (for the table of docs/fault-matrix.md)."""
        return f"exit {self.rc}: " + ", ".join(f"`{e}`" for e in self.expect)


@dataclass(frozen=True)
class Run:
    """One finished (or killed) subprocess."""

    argv: list[str]
    rc: int | None      # None: killed at the timeout
    stdout: str
    stderr: str
    wall: float

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])


@dataclass
class Result:
    """A case's outcome."""

    case: Case
    sandbox: str
    outcome: str
    reason: str
    headline: str
    run: Run


# -- shared inputs: the pristine dataset, DHR inputs, and the checkpoints trained once -------------------------------
class Shared:
    """What every sandbox copies or reads: made once per matrix run, the checkpoints on first use."""

    def __init__(self, root: Path, timeout: float) -> None:
        self.root = root
        self.timeout = timeout
        self.env = child_env(root)
        self.pristine = root / "pristine"
        make_dataset(self.pristine)

    def _train(self, name: str, *extra: str) -> Path:
        run_dir = self.root / name
        argv = ("dhr.train", *extra, "evaluate_after_fit=false")
        cmd = command(argv, {"data": str(self.pristine), "run": str(run_dir), "case": str(run_dir)})
        self._must(execute(cmd, cwd=self.root, env=self.env, timeout=self.timeout, log=run_dir / "log"), name)
        return run_dir / "checkpoints" / "last.ckpt"

    def _must(self, run: Run, what: str) -> None:
        if run.rc != 0:
            sys.exit(f"fault matrix: making the shared {what} failed (exit {run.rc}):\n{run.tail(30)}")
        print(f"  (shared {what}: {run.wall:.0f} s)", flush=True)

    @cached_property
    def ckpt(self) -> Path:
        """A tiny supervised DeepLabv3+ checkpoint (3 steps)."""
        return self._train("deeplab")

    @cached_property
    def cam_ckpt(self) -> Path:
        """A tiny CAM checkpoint: a checkpoint of another model."""
        return self._train("cam", "model=cam")

    @cached_property
    def preds(self) -> Path:
        """The val predictions of :attr:`ckpt` (8 palette PNGs)."""
        out = self.root / "preds"
        tokens = {"data": str(self.pristine), "run": str(self.root / "predict"), "case": str(self.root)}
        cmd = command(("dhr.predict", f"ckpt={self.ckpt}", f"out_dir={out}"), tokens)
        self._must(execute(cmd, cwd=self.root, env=self.env, timeout=self.timeout, log=self.root / "predict" / "log"),
                   "predictions")
        return out


def child_env(root: Path) -> dict[str, str]:
    """The environment of every command: offline, no W&B, a private data-check cache and an empty weight cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("DHR_DATA", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", DHR_CACHE_DIR=str(root / "cache"), HF_HOME=str(root / "hf"),
               TORCH_HOME=str(root / "torch"), PYTHONUNBUFFERED="1")
    return env


def make_dataset(root: Path) -> None:
    """The tiny synthetic set, erased-minor seeds in ``WSS/SYNTH/ERASED/train``, and random 6-d USS maps of
    the exporter's grid (patch 8) in ``SYNTH/train/CAUSE_TEST`` (as tests/conftest.py::dhr_inputs)."""
    import torch

    from dhr.data.synthetic import generate, write_erased_seeds
    from dhr.data.uss import feature_grid
    from dhr.utils.io import read_rgb

    synth = generate(root, "SYNTH", progress=False, **TINY_SYNTH)
    write_erased_seeds(synth / "train" / "mask", root / "WSS" / "SYNTH" / "ERASED" / "train")
    uss = synth / "train" / "CAUSE_TEST"
    uss.mkdir()
    g = torch.Generator().manual_seed(0)
    for image in sorted((synth / "train" / "image").glob("*.jpg")):
        with read_rgb(image) as im:
            h, w = im.height, im.width
        torch.save(torch.randn(6, *feature_grid(h, w, 8), generator=g).half(), uss / f"{image.stem}.pt")
    (uss / "manifest.json").write_text(json.dumps({"patch": 8}))


# -- commands -----------------------------------------------------------------------------------------------------
def expand(text: str, tokens: dict[str, Any]) -> str:
    """``text`` with each ``{name}`` of ``tokens`` replaced (values may be callables, called only when used)."""
    for name, value in tokens.items():
        key = "{" + name + "}"
        if key in text:
            text = text.replace(key, str(value() if callable(value) else value))
    return text


def override_key(arg: str) -> str:
    return arg.lstrip("~+").split("=", 1)[0]


def command(argv: Sequence[str], tokens: dict[str, Any]) -> list[str]:
    """``python -m <entry> <flags> <base overrides> <case overrides>``, expanded.

    A later override replaces an earlier one of the same key (a case's the base's), and a group
    choice (``model=cam``) drops the base overrides inside that group (``model.aspp_channels``),
    which the chosen option may not have.
    """
    entry, args = argv[0], list(argv[1:])
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    groups = {override_key(a) for a in overrides if "." not in override_key(a)}
    base = [b for b in BASE.get(entry, ()) if override_key(b).split(".", 1)[0] not in groups]
    last = {override_key(a): i for i, a in enumerate((*base, *overrides))}
    merged = [a for i, a in enumerate((*base, *overrides)) if last[override_key(a)] == i]
    return [sys.executable, "-m", entry, *flags, *(expand(a, tokens) for a in merged)]


def execute(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float, log: Path,
            umask: int | None = None, kill_when: str | None = None) -> Run:
    """Run ``cmd`` in its own session with stdout/stderr to ``log``.out/.err; SIGKILL it once a file
    matches the glob ``kill_when``, or at ``timeout``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    start = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, umask=-1 if umask is None else umask)
        rc: int | None
        try:
            if kill_when is not None:
                pattern = Path(kill_when)
                while proc.poll() is None and time.monotonic() - start < timeout:
                    if next(pattern.parent.glob(pattern.name), None) is not None:
                        kill(proc)
                        break
                    time.sleep(0.01)
            rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            kill(proc)
            proc.wait()
            rc = None
        except BaseException:  # Ctrl-C: the command runs in its own session, so stop it too
            kill(proc)
            raise
    return Run(cmd, rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
               time.monotonic() - start)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this matrix started for ``proc`` (it may have ended already)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Sandbox:
    """One case's folder: a copy of the dataset (``{data}``), its run directory and its logs."""

    def __init__(self, root: Path, shared: Shared, case: Case) -> None:
        self.root, self.shared, self.case = root, shared, case
        self.notes: dict[str, Any] = {}  # what a setup tells the case's verify
        shutil.copytree(shared.pristine, root / "data", symlinks=True)

    @cached_property
    def preds(self) -> Path:
        """This case's copy of the shared val predictions."""
        return Path(shutil.copytree(self.shared.preds, self.root / "preds"))

    @property
    def tokens(self) -> dict[str, Any]:
        data = self.root / "data"
        return {"case": self.root, "data": data, "synth": data / "SYNTH", "seeds": data / "WSS" / "SYNTH" / "ERASED" / "train",
                "uss": data / "SYNTH" / "train" / "CAUSE_TEST", "run": self.root / "run",
                "preds": lambda: self.preds, "ckpt": lambda: self.shared.ckpt, "cam_ckpt": lambda: self.shared.cam_ckpt}

    def path(self, text: str) -> Path:
        return Path(expand(text, self.tokens))

    def command(self, argv: Sequence[str] | None = None) -> list[str]:
        return command(self.case.argv if argv is None else argv, self.tokens)

    def run(self, argv: Sequence[str] | None = None, *, name: str = "run", kill_when: str | None = None) -> Run:
        return execute(self.command(argv), cwd=self.root, env=self.shared.env, timeout=self.shared.timeout,
                       log=self.root / "logs" / name, umask=self.case.umask,
                       kill_when=None if kill_when is None else expand(kill_when, self.tokens))

    def scrub(self, text: str) -> str:
        """``text`` with this sandbox's path written ``$CASE`` (its folder name, the case id, must not count as
        a word of the message) and the matrix folder ``$FM``."""
        return text.replace(str(self.root), "$CASE").replace(str(self.shared.root.parent), "$FM")

    def hashes(self) -> dict[str, str]:
        """sha256 of every file the case protects (added and removed files count as changes)."""
        files = sorted({p for g in self.case.protect for p in glob(self.path(g)) if p.is_file()})
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def glob(pattern: Path) -> list[Path]:
    return sorted(pattern.parent.glob(pattern.name))


# -- setups: what a case breaks before its run ----------------------------------------------------------------------
def chain(*setups: Setup) -> Setup:
    def setup(sb: Sandbox) -> None:
        for step in setups:
            step(sb)
    return setup


def truncate(target: str, keep: float = 0.4) -> Setup:
    """Cut a file to ``keep`` of its bytes (an interrupted download or copy)."""
    def setup(sb: Sandbox) -> None:
        path = sb.path(target)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return setup


def scribble(target: str, size: int = 4096) -> Setup:
    """Random bytes in place of (or as) a file."""
    def setup(sb: Sandbox) -> None:
        path = sb.path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(target).randbytes(size))
    return setup


def remove(*targets: str) -> Setup:
    """Delete files or folders (globs allowed)."""
    def setup(sb: Sandbox) -> None:
        for target in targets:
            for path in glob(sb.path(target)):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return setup


def empty(folder: str) -> Setup:
    """Delete every file of a folder, keeping the folder."""
    return remove(folder + "/*")


def copy(src: str, dst: str) -> Setup:
    """Copy a file, or every file of a folder into ``dst``."""
    def setup(sb: Sandbox) -> None:
        source, target = sb.path(src), sb.path(dst)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return setup


def symlink(target: str, link: str) -> Setup:
    def setup(sb: Sandbox) -> None:
        sb.path(link).symlink_to(sb.path(target), target_is_directory=True)
    return setup


def write(target: str, text: str) -> Setup:
    def setup(sb: Sandbox) -> None:
        sb.path(target).write_text(text)
    return setup


def edit_text(target: str, old: str, new: str) -> Setup:
    """Replace the first ``old`` in a text file (an XML tag, a class list)."""
    def setup(sb: Sandbox) -> None:
        path = sb.path(target)
        text = path.read_text()
        if old not in text:
            raise RuntimeError(f"setup: {old!r} not in {path}")
        path.write_text(text.replace(old, new, 1))
    return setup


def edit_label(target: str, how: str, value: int = 0) -> Setup:
    """Change a label PNG: ``paint`` a 6x6 block with ``value``, ``widen`` it by 5 px, save it as ``rgb``,
    or put ``value`` on every class boundary (``ring``, the ignore band of VOC-style GT)."""
    def setup(sb: Sandbox) -> None:
        import numpy as np
        from PIL import Image

        from dhr.data.palette import make_palette
        from dhr.utils.io import read_label_png, save_label_png

        for path in glob(sb.path(target)):
            label = read_label_png(path).copy()
            if how == "rgb":
                Image.open(path).convert("RGB").save(path)
                continue
            if how == "paint":
                label[:6, :6] = value
            elif how == "widen":
                label = np.pad(label, ((0, 0), (0, 5)), mode="edge")
            elif how == "ring":
                edge = np.zeros(label.shape, dtype=bool)
                edge[:, 1:] |= label[:, 1:] != label[:, :-1]
                edge[1:, :] |= label[1:, :] != label[:-1, :]
                label[edge] = value
            save_label_png(path, label, make_palette("voc", 256))
    return setup


def features(target: str, shape: tuple[int, ...]) -> Setup:
    """Write a USS feature file of ``shape`` (fp16)."""
    def setup(sb: Sandbox) -> None:
        import torch

        torch.save(torch.randn(*shape).half(), sb.path(target))
    return setup


def feature_dim(folder: str, dim: int) -> Setup:
    """Give every other feature file of a folder ``dim`` channels (two exports mixed in one folder)."""
    def setup(sb: Sandbox) -> None:
        import torch

        for path in glob(sb.path(folder + "/*.pt"))[::2]:
            feat = torch.load(path, weights_only=True)
            torch.save(torch.randn(dim, *feat.shape[1:]).half(), path)
    return setup


def checkpoint(dst: str, kind: str) -> Setup:
    """A file made from the shared checkpoint: its bare ``state_dict`` (torch.save of a dict of tensors),
    its first half (``truncated``), or ``five_classes``: its head cut to 5 classes, as if trained on
    another dataset."""
    def setup(sb: Sandbox) -> None:
        import torch

        src, path = sb.shared.ckpt, sb.path(dst)
        if kind == "truncated":
            data = src.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            return
        state = torch.load(src, map_location="cpu", weights_only=True)
        if kind == "state_dict":
            torch.save(state["state_dict"], path)
            return
        for key in ("state_dict", "ema_state_dict"):
            state[key] = {k: v[:5] if "classifier" in k else v for k, v in state[key].items()}
        state["hyper_parameters"]["num_classes"] = 5
        torch.save(state, path)
    return setup


def run_first(*, without: tuple[str, ...] = (), kill_when: str | None = None) -> Setup:
    """Run the case's own command once before (minus the overrides ``without``); with ``kill_when`` SIGKILL it
    as soon as a file matches that glob. The number of PNGs beside the glob is noted for ``verify``."""
    def setup(sb: Sandbox) -> None:
        argv = [a for a in sb.case.argv if a not in without]
        first = sb.run(argv, name="first", kill_when=kill_when)
        sb.notes["first_rc"] = first.rc
        if kill_when is not None:
            sb.notes["killed_at"] = len(glob(sb.path(kill_when)))
        elif first.rc != 0:
            raise RuntimeError(f"setup: the first run failed (exit {first.rc}):\n{first.tail()}")
    return setup


# -- verifies: checks after the run -------------------------------------------------------------------------------
def modes(folder: str, mode: int) -> Verify:
    """Every file the run wrote in ``folder`` (and its ``<folder>_scores.json``) has permissions ``mode``."""
    def verify(sb: Sandbox, run: Run) -> str | None:
        out = sb.path(folder)
        files = [p for p in out.iterdir() if p.is_file()] + [out.with_name(out.name + "_scores.json")]
        wrong = [f"{p.name} {oct(p.stat().st_mode & 0o777)}" for p in files if p.exists() and p.stat().st_mode & 0o777 != mode]
        return f"want {oct(mode)}: {', '.join(wrong[:4])}" if wrong else None
    return verify


def resumed(folder: str, count: int) -> Verify:
    """The first run was killed part-way and the case's run completed the folder to ``count`` PNGs."""
    def verify(sb: Sandbox, run: Run) -> str | None:
        killed_at = sb.notes.get("killed_at", 0)
        if sb.notes.get("first_rc") == 0 or killed_at >= count:
            return f"the first run finished before the kill ({killed_at} PNGs): inconclusive"
        now = len(glob(sb.path(folder + "/*.png")))
        manifest = json.loads((sb.path(folder) / ".predict.json").read_text())
        if now != count or not manifest.get("finished"):
            return f"killed at {killed_at} PNGs, {now} of {count} after the rerun, finished={manifest.get('finished')}"
        return None
    return verify


def within(seconds: float) -> Verify:
    """The run ended within ``seconds`` (an offline download must fail at once)."""
    def verify(sb: Sandbox, run: Run) -> str | None:
        return f"took {run.wall:.0f} s (want <= {seconds:.0f} s)" if run.wall > seconds else None
    return verify


# -- the cases ----------------------------------------------------------------------------------------------------
T, V = "{synth}/train", "{synth}/validation"
PREDICT = ("dhr.predict", "ckpt={ckpt}")
UMASK_PREDICT = (*PREDICT, "out_dir={case}/pred")
KILLED_PREDICT = (*PREDICT, "split=train", "out_dir={case}/pred", "infer.scales=[1.0,0.5,1.5,2.0]")

CASES: tuple[Case, ...] = (
    # data ---------------------------------------------------------------------------------------------------------
    Case("data-trunc-jpg-train", "data", "a truncated JPEG in train", ("dhr.train",),
         (f"{T}/image/tr_00005.jpg", DATA_FIX), setup=truncate(f"{T}/image/tr_00005.jpg")),
    Case("data-trunc-jpg-val", "data", "a truncated JPEG in val", ("dhr.train",),
         (f"{V}/image/va_00002.jpg", DATA_FIX), setup=truncate(f"{V}/image/va_00002.jpg")),
    Case("data-corrupt-mask", "data", "random bytes as a train mask PNG", ("dhr.train",),
         (f"{T}/mask/tr_00005.png", DATA_FIX), setup=scribble(f"{T}/mask/tr_00005.png")),
    Case("data-rgb-mask", "data", "a train mask saved as an RGB rendering", ("dhr.train",),
         (f"{T}/mask/tr_00005.png", "mode"), setup=edit_label(f"{T}/mask/tr_00005.png", "rgb")),
    Case("data-mask-size", "data", "a train mask 5 px wider than its image", ("dhr.train",),
         (f"{T}/mask/tr_00005.png", "WxH"), setup=edit_label(f"{T}/mask/tr_00005.png", "widen")),
    Case("data-mask-values", "data", "a train mask holding class 42 (9 classes)", ("dhr.train",),
         (f"{T}/mask/tr_00005.png", "[42]"), setup=edit_label(f"{T}/mask/tr_00005.png", "paint", 42)),
    Case("data-mask-missing", "data", "an image without its mask", ("dhr.train",),
         ("tr_00005.jpg", DATA_FIX), setup=remove(f"{T}/mask/tr_00005.png")),
    Case("data-twin-image", "data", "an id with both x.jpg and x.png", ("dhr.train",),
         ("tr_00005.jpg", "tr_00005.png"), setup=copy(f"{T}/mask/tr_00005.png", f"{T}/image/tr_00005.png")),
    Case("data-xml-unknown-class", "data", "an XML naming a class not in dataset.classes", ("dhr.train",),
         (f"{T}/xml/tr_00005.xml", "dataset.classes"), setup=edit_text(f"{T}/xml/tr_00005.xml", "<name>", "<name>dog_")),
    Case("data-xml-no-objects", "data", "an XML with no <object> (logged, not silent)",
         ("dhr.train", "evaluate_after_fit=false"), ("2 image(s) have no tag",), rc=0,
         setup=write(f"{T}/xml/tr_00005.xml", "<annotation><filename>tr_00005.jpg</filename></annotation>\n")),
    Case("data-class-json", "data", "SYNTH.json lists other class names than the config", ("dhr.train",),
         ("SYNTH.json", "dataset"), setup=edit_text("{synth}/SYNTH.json", "bolt", "screw")),
    Case("data-empty-images", "data", "an empty train/image folder", ("dhr.train",),
         (f"{T}/image", "no images"), setup=empty(f"{T}/image")),
    Case("data-missing-split", "data", "the validation split folder is missing", ("dhr.train",),
         ("validation", "paths.data_root"), setup=remove(V)),
    Case("data-wrong-root", "data", "dataset=voc with a paths.data_root that holds no VOC2012",
         ("dhr.train", "dataset=voc", "paths.data_root={case}/nowhere"), ("nowhere", "paths.data_root")),
    Case("data-skip-corrupt-train", "data", "data.on_error=skip with a truncated train JPEG: runs, logs the skip",
         ("dhr.train", "data.on_error=skip", "evaluate_after_fit=false"), ("leaving out 1 image(s)", "tr_00005.jpg"),
         rc=0, setup=truncate(f"{T}/image/tr_00005.jpg")),
    Case("data-skip-corrupt-val", "data", "data.on_error=skip with a truncated val JPEG: trains and evaluates the rest",
         ("dhr.train", "data.on_error=skip"), ("leaving out 1 image(s)", "va_00002.jpg"), rc=0,
         setup=truncate(f"{V}/image/va_00002.jpg")),
    # DHR inputs and seeds -----------------------------------------------------------------------------------------
    Case("dhr-uss-corrupt", "data", "model=dhr: random bytes as a USS feature file", ("dhr.train", *DHR),
         ("{uss}/tr_00005.pt", "dhr.features"), setup=scribble("{uss}/tr_00005.pt")),
    Case("dhr-uss-missing-file", "data", "model=dhr: one image without its USS feature file", ("dhr.train", *DHR),
         ("tr_00005", "dhr.features"), setup=remove("{uss}/tr_00005.pt")),
    Case("dhr-uss-wrong-grid", "data", "model=dhr: a USS feature file of the wrong grid (6x3x3)", ("dhr.train", *DHR),
         ("{uss}/tr_00005.pt", "uss_patch"), setup=features("{uss}/tr_00005.pt", (6, 3, 3))),
    Case("dhr-uss-wrong-dim", "data", "model=dhr: half the USS files 5-d, half 6-d (two exports mixed)",
         ("dhr.train", *DHR), ("CAUSE_TEST/tr_000", "dhr.features"), setup=feature_dim("{uss}", 5)),
    Case("dhr-uss-wrong-dim-worker", "data", "the same, read by a DataLoader worker (recipe.num_workers=1)",
         ("dhr.train", *DHR, "recipe.num_workers=1"), ("CAUSE_TEST/tr_000", "dhr.features"), setup=feature_dim("{uss}", 5)),
    Case("dhr-uss-folder-missing", "data", "model=dhr: model.dhr.uss_name names no folder",
         ("dhr.train", *DHR, "model.dhr.uss_name=CAUSE_NOSUCH"), ("CAUSE_NOSUCH", "dhr.features")),
    Case("dhr-uss-patch", "data", "model=dhr: model.dhr.uss_patch=14 for features exported with patch 8",
         ("dhr.train", *DHR, "model.dhr.uss_patch=14"), ("patch 8", "model.dhr.uss_patch=8")),
    Case("dhr-no-cam-seeds", "data", "experiment=synthetic_dhr before the CAM seeds were made (wss=cam)",
         ("dhr.train", "experiment=synthetic_dhr", "model.dhr.uss_name=CAUSE_TEST", "crf.processes=1"),
         ("WSS/SYNTH/CAM/train", "model=cam")),
    Case("dhr-no-wss", "data", "model=dhr without any wss=", ("dhr.train", "model=dhr"), ("data.masks=seeds", "wss=")),
    Case("dhr-seed-bad-values", "data", "model=dhr: a seed mask holding class 42", ("dhr.train", *DHR),
         ("{seeds}/tr_00005.png", DATA_FIX), setup=edit_label("{seeds}/tr_00005.png", "paint", 42)),
    Case("wss-folder-no-path", "data", "wss=folder without wss.path", ("dhr.train", "wss=folder"),
         ("wss.path", "wss.path=")),
    Case("wss-path-missing", "data", "wss=folder with a wss.path that does not exist",
         ("dhr.train", "wss=folder", "wss.path={case}/nosuch"), ("{case}/nosuch", "wss.path")),
    # config -------------------------------------------------------------------------------------------------------
    Case("cfg-max-epochs-abc", "config", "trainer.max_epochs=abc", ("dhr.train", "trainer.max_epochs=abc"),
         ("trainer.max_epochs", "whole number")),
    Case("cfg-num-workers-abc", "config", "data.num_workers=abc", ("dhr.train", "data.num_workers=abc"),
         ("data.num_workers", "number")),
    Case("cfg-dataset-nosuch", "config", "dataset=nosuch (no such group option)", ("dhr.train", "dataset=nosuch"),
         ("dataset/nosuch", "Available options")),
    Case("cfg-unknown-key", "config", "a misspelt key, recipe.lrr=0.1", ("dhr.train", "recipe.lrr=0.1"),
         ("recipe.lrr", "+recipe.lrr")),
    Case("cfg-batch-negative", "config", "recipe.batch_size=-4", ("dhr.train", "recipe.batch_size=-4"),
         ("batch_size", "-4")),
    Case("cfg-batch-too-big", "config", "recipe.batch_size=64 with 24 training images",
         ("dhr.train", "recipe.batch_size=64"), ("recipe.batch_size", "24")),
    Case("cfg-tau-range", "config", "model.dhr.tau=2 (outside [0, 1])", ("dhr.train", *DHR, "model.dhr.tau=2"),
         ("model.dhr.tau=2", "[0, 1]")),
    Case("cfg-pretrained-offline", "config", "backbone.pretrained=true offline with an empty cache: fails at once",
         ("dhr.train", "backbone.pretrained=true"), ("backbone.pretrained", "backbone.weights=PATH"),
         verify=within(45)),
    Case("cfg-weights-missing", "config", "backbone.weights= a file that does not exist",
         ("dhr.train", "backbone.weights={case}/missing.pth"), ("{case}/missing.pth", "file not found")),
    Case("cfg-weights-garbage", "config", "backbone.weights= a file of random bytes",
         ("dhr.train", "backbone.weights={case}/garbage.pth"), ("{case}/garbage.pth", "not a PyTorch file"),
         setup=scribble("{case}/garbage.pth")),
    Case("cfg-predict-no-ckpt", "config", "dhr.predict without ckpt=", ("dhr.predict",), ("ckpt", "ckpt=")),
    Case("cfg-features-no-ckpt", "config", "dhr.features without ckpt=", ("dhr.features",), ("ckpt", "ckpt=")),
    Case("cfg-evaluate-no-pred", "config", "dhr.evaluate without pred=", ("dhr.evaluate",), ("pred", "pred=")),
    Case("cfg-ddp-multirun", "config", "trainer=ddp inside a local multirun",
         ("dhr.train", "-m", "trainer=ddp", "seed=1,2"), ("ddp", "ddp_cpu")),
    Case("cfg-accelerator-gpu", "config", "trainer.accelerator=gpu on a machine without a GPU",
         ("dhr.train", "trainer.accelerator=gpu"), ("trainer.accelerator", "cpu")),
    # checkpoints --------------------------------------------------------------------------------------------------
    Case("ckpt-random-bytes", "checkpoint", "ckpt_path= a file of random bytes",
         ("dhr.train", "ckpt_path={case}/garbage.ckpt"), ("{case}/garbage.ckpt", "dhr.train"),
         setup=scribble("{case}/garbage.ckpt")),
    Case("ckpt-state-dict", "checkpoint", "ckpt_path= a plain state_dict saved with torch.save",
         ("dhr.train", "ckpt_path={case}/plain.pt"), ("{case}/plain.pt", "backbone.weights"),
         setup=checkpoint("{case}/plain.pt", "state_dict")),
    Case("ckpt-truncated", "checkpoint", "ckpt_path= the first half of a real checkpoint",
         ("dhr.train", "ckpt_path={case}/half.ckpt"), ("{case}/half.ckpt", "truncated"),
         setup=checkpoint("{case}/half.ckpt", "truncated")),
    Case("ckpt-other-model", "checkpoint", "ckpt_path= a CAM checkpoint for DeepLabv3+ training",
         ("dhr.train", "ckpt_path={cam_ckpt}"), ("{cam_ckpt}", "config it was trained with")),
    Case("ckpt-classes-train", "checkpoint", "ckpt_path= a checkpoint of 5 classes on the 9-class set",
         ("dhr.train", "ckpt_path={case}/five.ckpt"), ("{case}/five.ckpt", "shape"),
         setup=checkpoint("{case}/five.ckpt", "five_classes")),
    Case("ckpt-classes-predict", "checkpoint", "dhr.predict of a 5-class checkpoint on the 9-class set",
         ("dhr.predict", "ckpt={case}/five.ckpt"), ("{case}/five.ckpt", "dataset="),
         setup=checkpoint("{case}/five.ckpt", "five_classes")),
    Case("ckpt-last-missing", "checkpoint", "ckpt_path=last in a run directory without last.ckpt (warns, starts)",
         ("dhr.train", "ckpt_path=last", "debug=fdr"), ("ckpt_path=last but",), rc=0),
    Case("ckpt-predict-missing", "checkpoint", "dhr.predict ckpt= a file that does not exist",
         ("dhr.predict", "ckpt={case}/nosuch.ckpt"), ("{case}/nosuch.ckpt", "dhr.train")),
    Case("ckpt-predict-cam-no-model", "checkpoint", "dhr.predict of a CAM checkpoint without model=cam",
         ("dhr.predict", "ckpt={cam_ckpt}"), ("infer.", "model=cam")),
    Case("ckpt-features-deeplab", "checkpoint", "dhr.features ckpt= a DeepLabv3+ checkpoint (not CAUSE)",
         ("dhr.features", "ckpt={ckpt}"), ("{ckpt}", "CAUSE")),
    # outputs ------------------------------------------------------------------------------------------------------
    Case("out-predict-into-gt", "output", "dhr.predict out_dir= the val GT folder, overwrite=true",
         (*PREDICT, f"out_dir={V}/mask", "overwrite=true"), (f"{V}/mask", "choose another out_dir"),
         protect=(f"{V}/mask/*",)),
    Case("out-predict-into-images", "output", "dhr.predict out_dir= the val image folder, overwrite=true",
         (*PREDICT, f"out_dir={V}/image", "overwrite=true"), (f"{V}/image", "choose another out_dir"),
         protect=(f"{V}/image/*",)),
    Case("out-predict-into-features", "output", "dhr.predict out_dir= a USS feature folder, overwrite=true",
         (*PREDICT, "split=train", "out_dir={uss}", "overwrite=true"), ("{uss}", "choose another out_dir"),
         protect=("{uss}/*",)),
    Case("out-predict-gt-symlink", "output", "dhr.predict out_dir= a symlink to the GT folder, overwrite=true",
         (*PREDICT, "out_dir={case}/gt_link", "overwrite=true"), ("gt_link", "choose another out_dir"),
         setup=symlink(f"{V}/mask", "{case}/gt_link"), protect=(f"{V}/mask/*",)),
    Case("out-features-into-images", "output", "dhr.features out_dir= the train image folder",
         ("dhr.features", "ckpt={ckpt}", f"out_dir={T}/image"), (f"{T}/image", "choose another out_dir"),
         protect=(f"{T}/image/*",)),
    Case("out-predict-foreign-pngs", "output", "dhr.predict into a folder holding PNGs it did not write",
         (*PREDICT, "out_dir={case}/pred"), ("did not write", "overwrite=true"),
         setup=copy(f"{V}/mask", "{case}/pred"), protect=("{case}/pred/*",)),
    Case("out-predict-finished", "output", "dhr.predict again into its finished folder",
         (*PREDICT, "out_dir={case}/pred"), ("finished", "overwrite=true"),
         setup=run_first(), protect=("{case}/pred/*.png",)),
    Case("out-predict-other-settings", "output", "dhr.predict into its folder with other settings (infer.flip)",
         (*PREDICT, "out_dir={case}/pred", "infer.flip=false"), ("infer", "overwrite=true"),
         setup=run_first(without=("infer.flip=false",)), protect=("{case}/pred/*.png",)),
    Case("out-predict-resume-killed", "output", "a dhr.predict SIGKILLed after its first PNG resumes and completes",
         KILLED_PREDICT, ("resuming:",), rc=0,
         setup=run_first(kill_when="{case}/pred/*.png"), verify=resumed("{case}/pred", TINY_SYNTH["num_train"])),
    Case("out-umask-022", "output", "dhr.predict under umask 022 writes 0644 files", UMASK_PREDICT,
         ("wrote 8 label PNGs",), rc=0, umask=0o022, verify=modes("{case}/pred", 0o644)),
    Case("out-umask-002", "output", "dhr.predict under umask 002 writes 0664 files", UMASK_PREDICT,
         ("wrote 8 label PNGs",), rc=0, umask=0o002, verify=modes("{case}/pred", 0o664)),
    # evaluate -----------------------------------------------------------------------------------------------------
    Case("eval-swapped", "evaluate", "dhr.evaluate with pred= and gt= swapped (warns)",
         ("dhr.evaluate", f"pred={V}/mask", "gt={preds}"), ("swapped",), rc=0),
    Case("eval-swapped-ignore", "evaluate", "pred= and gt= swapped, GT with a 255 band on class edges (warns)",
         ("dhr.evaluate", f"pred={V}/mask", "gt={preds}"), ("swapped",), rc=0,
         setup=edit_label(f"{V}/mask/*.png", "ring", 255)),
    Case("eval-same-folder", "evaluate", "dhr.evaluate with pred= the GT folder (warns)",
         ("dhr.evaluate", f"pred={V}/mask", f"gt={V}/mask"), ("equal the GT",), rc=0),
    Case("eval-voc-on-synth", "evaluate", "dataset=voc on the SYNTH GT (9 classes, SYNTH.json beside it)",
         ("dhr.evaluate", "dataset=voc", "pred={preds}", f"gt={V}/mask"), ("dataset=", "SYNTH")),
    Case("eval-missing-preds", "evaluate", "2 of 8 predictions missing (documented exit 1)",
         ("dhr.evaluate", "pred={preds}"), ("2 prediction(s) missing", "allow_missing=true"), rc=1,
         setup=remove("{preds}/va_00001.png", "{preds}/va_00003.png")),
    Case("eval-wrong-size", "evaluate", "a prediction 5 px wider than its GT", ("dhr.evaluate", "pred={preds}"),
         ("{preds}/va_00002.png", "image size"), setup=edit_label("{preds}/va_00002.png", "widen")),
    Case("eval-out-of-range", "evaluate", "a prediction holding class 42 (warns: counted as misses)",
         ("dhr.evaluate", "pred={preds}"), ("counted as misses",), rc=0,
         setup=edit_label("{preds}/va_00002.png", "paint", 42)),
)


# -- judging ------------------------------------------------------------------------------------------------------
def judge(case: Case, sb: Sandbox, run: Run, changed: bool) -> tuple[str, str]:
    """(outcome, reason) of a finished case."""
    if run.rc is None:
        return "hang", f"no exit within {sb.shared.timeout:.0f} s"
    if "Traceback (most recent call last)" in run.stderr:
        return "traceback", f"exit {run.rc}"
    if changed:
        return "damaged", "protected files changed"
    texts = [sb.scrub(expand(t, sb.tokens)) for t in case.expect]
    if case.rc == 0:
        if run.rc != 0:
            return "unclear", f"exit {run.rc} where exit 0 was due"
        missing = [t for t in texts if t not in sb.scrub(run.output)]
        if missing:
            return "silent", f"exit 0 without {missing[0]!r} in the output"
    else:
        if run.rc == 0:
            return "silent", "exit 0 where an error was due"
        missing = [t for t in texts if t not in sb.scrub(run.tail())]
        if run.rc != case.rc:
            return "unclear", f"exit {run.rc}, want {case.rc}" + (f"; message lacks {missing[0]!r}" if missing else "")
        if missing:
            return "unclear", f"message lacks {missing[0]!r}"
    problem = case.verify(sb, run) if case.verify is not None else None
    if problem:
        return "silent", problem
    return "user-grade", ""


def headline(case: Case, sb: Sandbox, run: Run) -> str:
    """The first line of what the user sees: the error line, the warning, or the exception."""
    err = [line.strip() for line in sb.scrub(run.stderr).splitlines()
           if line.strip() and not line.startswith("Error executing job with overrides")]
    if "Traceback (most recent call last)" in run.stderr:
        raised = [line for line in err if EXCEPTION_LINE.match(line)]
        return (raised or err)[-1]
    for i, line in enumerate(err):
        if line.lower().startswith("error"):  # "error: 3 problem(s) in ...:" is followed by the first problem
            return f"{line} | {err[i + 1]}" if line.endswith(":") and i + 1 < len(err) else line
    output = sb.scrub(run.output)
    wanted = sb.scrub(expand(case.expect[0], sb.tokens))
    hits = [line for line in output.splitlines() if wanted in line]
    if not hits and run.rc != 0 and err:
        return err[0]
    line = hits[0] if hits else (sb.scrub(run.stdout).strip().splitlines() or [""])[-1]
    return line.split("] - ", 1)[-1].strip()


def run_case(case: Case, shared: Shared, root: Path) -> Result:
    """Set up the case's sandbox, run it, judge it."""
    sb = Sandbox(root, shared, case)
    if case.setup is not None:
        case.setup(sb)
    before = sb.hashes()
    run = sb.run()
    outcome, reason = judge(case, sb, run, changed=sb.hashes() != before)
    return Result(case, str(root), outcome, reason, headline(case, sb, run), run)


def shown(run: Run) -> str:
    """What a report shows of a run: its stderr tail, and the stdout tail when stderr says little."""
    err = run.tail(SHOWN_LINES)
    if len(err.splitlines()) >= 3:
        return err
    out = "\n".join(run.stdout.rstrip().splitlines()[-SHOWN_LINES:])
    return f"{err}\n[stdout]\n{out}" if err else f"[stdout]\n{out}"


def short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def printable(cmd: Sequence[str], root: Path) -> str:
    """A command as a user would type it (``python -m ...``; a path alone as it is), the matrix folder written ``$FM``."""
    words = ["python", *cmd[1:]] if cmd[0] == sys.executable else list(cmd)
    return shlex.join(words).replace(str(root), "$FM")


def as_json(r: Result, root: Path) -> dict[str, Any]:
    """One result for ``--json``: the case, its outcome and what the user saw."""
    return {"id": r.case.id, "category": r.case.category, "what": r.case.what, "expected": r.case.expected,
            "argv": shlex.join(r.case.argv), "sandbox": printable([r.sandbox], root), "outcome": r.outcome,
            "reason": r.reason, "headline": r.headline, "rc": r.run.rc, "wall_s": round(r.run.wall, 1),
            "command": printable(r.run.argv, root), "shown": shown(r.run)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="SUBSTRING", help="run the cases whose id contains SUBSTRING")
    parser.add_argument("--keep", metavar="DIR", type=Path, help="build the sandboxes in DIR and keep them")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per command (default 300)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write every result as JSON to PATH")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.only is None or args.only in c.id]
    if not cases:
        parser.error(f"no case id contains {args.only!r}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep}: choose an empty or new folder")
    root = (args.keep or Path(tempfile.mkdtemp(prefix="dhr-fault-matrix-"))).resolve()
    start = time.monotonic()
    results: list[Result] = []
    try:
        print(f"fault matrix: {len(cases)} case(s) in {root}", flush=True)
        shared = Shared(root / "shared", args.timeout)
        for n, case in enumerate(cases, start=1):  # sandboxes by number: a case id in a path could pass for a message word
            result = run_case(case, shared, root / "cases" / f"{n:02d}")
            results.append(result)
            if args.keep is None:  # a sandbox whose run trained holds ~400 MB of checkpoints
                shutil.rmtree(result.sandbox, ignore_errors=True)
            print(f"{case.id:<28} {case.category:<10} {result.outcome:<10} {result.run.wall:5.1f}s  "
                  f"{short(result.headline, 160)}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.monotonic() - start
    good = sum(r.outcome == "user-grade" for r in results)
    for r in (r for r in results if r.outcome != "user-grade"):
        print(f"\n--- {r.case.id} ({r.outcome}: {r.reason}; sandbox {printable([r.sandbox], root)})\n"
              f"$ {printable(r.run.argv, root)}\n"
              + "\n".join("  " + line for line in shown(r.run).splitlines()))
    print(f"\n{good} of {len(results)} user-grade ({wall / 60:.1f} min)")
    if args.json is not None:
        args.json.write_text(json.dumps({"wall_s": round(wall, 1), "user_grade": good,
                                         "cases": [as_json(r, root) for r in results]}, indent=2) + "\n")
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
