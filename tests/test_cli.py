"""Command-line behaviour: exit statuses and messages of the entry points, run in this process (``cli``: argv
patched, ``main()`` called); real subprocesses only where the process is the subject (imports, launchers)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, cli, tiny_train_overrides


@pytest.mark.slow
def test_help_lists_groups_without_importing_torch():
    code = ("import sys, runpy; sys.argv = ['dhr.train', '--help']\n"
            "try:\n    runpy.run_module('dhr.train', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    for group in ("dataset:", "recipe:", "crf:", "backbone:", "trainer:", "logger:", "debug:", "experiment:"):
        assert group in out
    assert "synthetic" in out and "voc" in out and "python -m dhr.evaluate" in out


def test_unknown_dataset_option_or_key_is_a_clear_hydra_error_with_exit_2(tmp_path):
    for arg, message in (("dataset=vocc", "Could not find 'dataset/vocc'"), ("recipe.lrr=0.1", "Could not override 'recipe.lrr'")):
        res = cli("dhr.train", arg, f"hydra.run.dir={tmp_path / 'run'}")
        assert res.rc == 2 and message in res.stderr


def test_bad_input_exits_2_with_one_line_error(tmp_path):
    res = cli("dhr.train", f"paths.data_root={tmp_path}", "dataset=voc", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.rc == 2
    assert "error:" in res.stderr and "split folder not found" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(("entry", "args", "message"), [
    ("dhr.train", ["ckpt_path={garbage}"], "not a readable checkpoint (the file is truncated or not a PyTorch file)"),
    ("dhr.train", ["ckpt_path={plain}"], "not a checkpoint written by dhr.train"),
    ("dhr.train", ["trainer.max_epochs=abc"], "trainer.max_epochs='abc': use a whole number"),
    ("dhr.train", ["debug=fdr", "recipe.max_epochs=abc"], "trainer.max_epochs='abc': use a whole number"),
    ("dhr.train", ["trainer.limit_val_batches=lots"], "trainer.limit_val_batches='lots'"),
    ("dhr.predict", [], "ckpt is required: add ckpt=... to the command"),
    ("dhr.train", ["data.num_workers=abc"], "data: a number was expected, not 'abc'; check data.num_workers=abc"),
    ("dhr.train", ["trainer.accelerator=tpu"], "trainer.enable_model_summary=false trainer.accelerator=tpu"),
    ("dhr.train", ["recipe.batch_size=-4"], "data.batch_size=-4, data.val_batch_size=8: use whole numbers >= 1"),
    ("dhr.train", ["recipe.batch_size=64"], "data.batch_size=64 (recipe.batch_size) is more than the 24 training images"),
    ("dhr.train", ["backbone.weights={garbage}"], "not a readable weights file (the file is truncated or not a PyTorch file)"),
    ("dhr.features", ["ckpt={plain_ckpt}"], "not of CAUSE; pass the head or probe checkpoint"),
], ids=["corrupt-ckpt", "state-dict-not-ckpt", "max-epochs", "max-epochs-fdr", "limit-batches", "predict-no-ckpt",
        "workers-abc", "trainer-refused", "batch-negative", "batch-too-big", "weights-garbage", "features-not-cause"])
def test_config_and_checkpoint_mistakes_exit_2_naming_the_key_or_file(tmp_path, synth_root, entry, args, message):
    import torch

    (tmp_path / "garbage.ckpt").write_text("not a checkpoint\n")
    torch.save({"net.weight": torch.zeros(2)}, tmp_path / "plain.pt")
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}, "dhr_module": "dhr.modules.segmentation.SegmentationModule"},
               tmp_path / "seg.ckpt")
    args = [a.format(garbage=tmp_path / "garbage.ckpt", plain=tmp_path / "plain.pt", plain_ckpt=tmp_path / "seg.ckpt")
            for a in args]
    overrides = tiny_train_overrides(synth_root) if entry == "dhr.train" else [f"paths.data_root={synth_root}", "dataset.generate=null"]
    res = cli(entry, *overrides, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert res.rc == 2, res.tail()
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training step


@pytest.mark.slow
def test_local_submitit_sweep_runs_one_job_per_value(tmp_path, synth_root):
    sweep = tmp_path / "sweep"  # launched in this process; submitit runs each job in a process of its own
    res = cli("dhr.train", "-m", "hydra/launcher=local", *tiny_train_overrides(synth_root), "debug=fdr", "seed=1,2",
              f"hydra.sweep.dir={sweep}")
    assert res.rc == 0, res.tail()
    for job in ("0", "1"):
        assert (sweep / job / ".hydra" / "overrides.yaml").is_file()
    assert "seed=2" in (sweep / "1" / ".hydra" / "overrides.yaml").read_text()


def test_local_multirun_with_plain_ddp_is_refused(tmp_path):
    res = cli("dhr.train", "-m", "trainer.strategy=ddp", "seed=1,2", f"paths.data_root={tmp_path}",
              f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.rc == 2 and "re-launches the whole sweep" in res.stderr


def test_a_refused_config_value_exits_2_naming_the_key(tmp_path):
    res = cli("dhr.train", "model=dhr", "model.dhr.tau=2", "wss=folder", f"wss.path={tmp_path}",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert res.rc == 2 and "error: model.dhr.tau=2" in res.stderr and "Traceback" not in res.stderr


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every ``python -m dhr.<entry>`` line of the README and docs/ (continuations joined)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    found = []
    for path in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip().strip("`")
            if line.startswith("python -m dhr."):
                found.append((path.name, line.split("`")[0].split("  #")[0]))
    return found


def test_every_documented_command_line_parses_as_hydra_overrides():
    """A documented override that Hydra's grammar refuses (e.g. an unquoted = inside a list) is a doc bug."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    commands = documented_commands()
    assert len(commands) > 20
    for name, command in commands:
        args = [a for a in shlex.split(command, comments=True)[3:] if not a.startswith("-") and "=" in a]
        for arg in args:
            if "<" in arg or "..." in arg:  # placeholders such as ckpt=<run>/...
                continue
            try:
                parser.parse_override(arg)
            except Exception as err:  # noqa: BLE001 - report which line fails
                raise AssertionError(f"{name}: {command!r}: {arg!r} does not parse ({str(err).splitlines()[0]})") from None
