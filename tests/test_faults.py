"""The fault matrix: the bad inputs and faults a demanding new user hits, one parametrized case each.

Every case breaks something in its own copy of a tiny generated dataset (24 train / 8 val images),
or passes a bad config value, checkpoint or output folder, runs one entry point in this process as
its command line would (``conftest.cli``: argv patched, ``main()`` called, exit status and both
streams captured) and classifies what came back:

* ``user-grade``: the expected outcome, the only one that passes. Errors: the expected exit status
  (2, or the documented 1 of ``dhr.evaluate`` for missing predictions), no ``Traceback`` on stderr,
  and the last stderr lines hold the case's substrings (the offending file or key and a fix).
  Warning cases: exit 0 and the warning text in the output. Cases that protect files (outputs
  never written over inputs) also check their hashes before and after.
* ``traceback``: a Python traceback on stderr.
* ``silent``: exit 0 where an error was due, a warning that never came, or a wrong result.
* ``unclear``: the run failed as it should, but with another exit status or a message that lacks
  the file, the key or the fix.
* ``damaged``: files the case protects changed.

The cases that need a trained model read the session's tiny DeepLabv3+ and CAM runs
(``deeplab_run``, ``cam_run``) and that DeepLabv3+ run's val predictions. The one case whose fault
is a killed process (``out-predict-resume-killed``) SIGKILLs a fork of this process. See
docs/fault-matrix.md; ``pytest tests/test_faults.py -k out-`` runs the cases whose id holds ``out-``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import GENERATE, TINY_SYNTH, CliRun, cli, make_dhr_inputs, tiny_train_overrides

DATA_FIX = "on_error=skip"  # the fix every up-front data-check error of dhr.train offers
BASE: dict[str, tuple[str, ...]] = {  # what every command of an entry point gets (a case's own overrides win)
    "dhr.train": (*tiny_train_overrides(Path("{data}")), "hydra.run.dir={run}", "hydra.sweep.dir={case}/sweep"),
    "dhr.predict": ("paths.data_root={data}", GENERATE, "infer.scales=[1.0]",
                    "trainer.accelerator=cpu", "data.num_workers=0", "hydra.run.dir={run}"),
    "dhr.features": ("paths.data_root={data}", GENERATE, "device=cpu", "hydra.run.dir={run}"),
    "dhr.evaluate": ("paths.data_root={data}", "json={case}/scores.json"),
}
# model=dhr on the tiny set: erased-minor seeds and random 6-d "USS" maps of patch 8 (conftest.dhr_overrides)
DHR = ("experiment=synthetic_dhr", "wss=folder", "wss.path={seeds}", "model.dhr.uss_name=CAUSE_TEST", "crf.processes=1",
       "model.dhr.tau=0.0")

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


@dataclass(frozen=True)
class Run(CliRun):
    """One finished command: its exit status and streams (``tail``: the last 30 stderr lines), argv and wall time."""

    argv: tuple[str, ...] = ()
    wall: float = 0.0


@dataclass(frozen=True)
class Shared:
    """What every sandbox copies or reads: the pristine dataset and the session's trained runs."""

    pristine: Path
    ckpt: Path
    cam_ckpt: Path
    preds: Path


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
    """``<entry> <flags> <base overrides> <case overrides>``, expanded.

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
    return [entry, *flags, *(expand(a, tokens) for a in merged)]


def timed(argv: list[str], umask: int | None) -> Run:
    start = time.monotonic()
    done = cli(argv[0], *argv[1:], umask=umask)
    return Run(done.rc, done.stdout, done.stderr, tuple(argv), time.monotonic() - start)


class Sandbox:
    """One case's folder: a copy of the dataset (``{data}``), its run directory and what the setup noted."""

    def __init__(self, root: Path, shared: Shared, case: Case) -> None:
        self.root, self.shared, self.case = root, shared, case
        self.notes: dict[str, Any] = {}  # what a setup tells the case's verify
        shutil.copytree(shared.pristine, root / "data", symlinks=True)
        self._preds: Path | None = None

    def preds(self) -> Path:
        """This case's copy of the shared val predictions."""
        if self._preds is None:
            self._preds = Path(shutil.copytree(self.shared.preds, self.root / "preds"))
        return self._preds

    @property
    def tokens(self) -> dict[str, Any]:
        data = self.root / "data"
        return {"case": self.root, "data": data, "synth": data / "SYNTH", "seeds": data / "WSS" / "SYNTH" / "ERASED" / "train",
                "uss": data / "SYNTH" / "train" / "CAUSE_TEST", "run": self.root / "run",
                "preds": self.preds, "ckpt": self.shared.ckpt, "cam_ckpt": self.shared.cam_ckpt}

    def path(self, text: str) -> Path:
        return Path(expand(text, self.tokens))

    def command(self, argv: Sequence[str] | None = None) -> list[str]:
        return command(self.case.argv if argv is None else argv, self.tokens)

    def run(self, argv: Sequence[str] | None = None) -> Run:
        return timed(self.command(argv), self.case.umask)

    def scrub(self, text: str) -> str:
        """``text`` with this sandbox's path written ``$CASE``: its folder name (after the case id) must not count
        as a word of the message."""
        return text.replace(str(self.root), "$CASE")

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
    """Run the case's own command once before (minus the overrides ``without``); with ``kill_when`` run it in a
    fork of this process and SIGKILL it as soon as a file matches that glob. The number of PNGs that match
    at the kill is noted for ``verify``."""
    def setup(sb: Sandbox) -> None:
        argv = [a for a in sb.case.argv if a not in without]
        if kill_when is None:
            first = sb.run(argv)
            sb.notes["first_rc"] = first.rc
            if first.rc != 0:
                raise RuntimeError(f"setup: the first run failed (exit {first.rc}):\n{first.tail()}")
            return
        pattern = sb.path(kill_when)
        cmd = sb.command(argv)
        pid = os.fork()
        if pid == 0:  # the child runs the command until it is killed
            code = 1
            try:
                code = cli(cmd[0], *cmd[1:]).rc
            finally:
                os._exit(code)
        deadline = time.monotonic() + 300
        status = 0
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if glob(pattern):
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        sb.notes["first_rc"] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        sb.notes["killed_at"] = len(glob(pattern))
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


# -- the cases -----------------------------------------------------------------------------------------------------
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


# -- judging -------------------------------------------------------------------------------------------------------
def judge(case: Case, sb: Sandbox, run: Run, changed: bool) -> tuple[str, str]:
    """(outcome, reason) of a finished case."""
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


@pytest.fixture(scope="session")
def shared(tmp_path_factory, deeplab_run, cam_run) -> Shared:
    """The pristine tiny dataset with erased seeds in ``WSS/SYNTH/ERASED/train`` and random USS maps in
    ``SYNTH/train/CAUSE_TEST``, and the session's trained DeepLabv3+ and CAM runs."""
    from conftest import TINY_SYNTH

    from dhr.data.synthetic import generate

    pristine = tmp_path_factory.mktemp("fault_pristine")
    generate(pristine, "SYNTH", progress=False, **TINY_SYNTH)
    make_dhr_inputs(pristine, pristine / "WSS")
    return Shared(pristine, deeplab_run.ckpt, cam_run.ckpt, deeplab_run.dir / "predictions" / "validation")


@pytest.fixture()
def _offline_empty_caches(tmp_path, monkeypatch):
    """Offline, no W&B, and empty weight caches: backbone.pretrained=true finds nothing to load."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for key, value in (("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "disabled"), ("HF_HOME", str(tmp_path / "hf")),
                       ("TORCH_HOME", str(tmp_path / "torch"))):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DHR_DATA", raising=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_fault_ends_user_grade(case: Case, shared: Shared, tmp_path, _offline_empty_caches):
    sb = Sandbox(tmp_path / "case", shared, case)
    if case.setup is not None:
        case.setup(sb)
    before = sb.hashes()
    run = sb.run()
    outcome, reason = judge(case, sb, run, changed=sb.hashes() != before)
    shown = run.tail(12) if run.stderr.strip() else run.stdout[-1500:]
    assert outcome == "user-grade", f"{case.id}: {outcome} ({reason})\n$ {' '.join(run.argv)}\n{sb.scrub(shown)}"


def test_every_case_id_is_unique_and_every_category_is_known():
    assert len({c.id for c in CASES}) == len(CASES) == 71
    assert {c.category for c in CASES} == {"data", "config", "checkpoint", "output", "evaluate"}
