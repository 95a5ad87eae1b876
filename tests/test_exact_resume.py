"""A run killed mid-epoch (SIGKILL, no clean-up) and resumed with ckpt_path=last ends with the weights, EMA
and validation scores of the uninterrupted run, bit for bit on the CPU: data loaded in the main process and
in a worker process, and under trainer=ddp_cpu with the launcher and both ranks killed at once.

The single-process runs are killed in a fork of the test process (a real process, SIGKILLed, without the
start-up cost of a new interpreter); the DDP run is a real ``python -m dhr.train trainer=ddp_cpu`` whose
spawned ranks are killed with their launcher.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import DDP_FORK, REPO, cli, in_forked_child, resume_overrides, train_once


def last_val(run_dir) -> list[str]:
    rows = [r for f in sorted((run_dir / "csv").glob("version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    return [r["val/mIoU"] for r in rows if r.get("val/mIoU")]


def resume_and_compare(whole, resumed, overrides: list[str]) -> None:
    """Resume the run killed at step 9 (checkpoint of step 8): it ends as the uninterrupted one, bit for bit."""
    partial = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert partial["global_step"] == 8
    res = cli("dhr.train", *overrides, "ckpt_path=last", f"hydra.run.dir={resumed}")
    assert res.rc == 0, res.tail()
    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("state_dict", "ema_state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    assert last_val(whole)[-1] == last_val(resumed)[-1]
    log = (resumed / "train.log").read_text()
    assert log.count("Seed set") == 2 and "Restoring states from the checkpoint" in log  # one log, appended


@pytest.mark.parametrize("workers", [0, 1])
def test_a_killed_and_resumed_run_ends_exactly_as_the_uninterrupted_one(tmp_path, tmp_path_factory, synth_root,
                                                                       resume_reference, workers):
    overrides = resume_overrides(synth_root, workers)  # 6 steps per epoch, 12 in all
    reference = resume_reference if workers == 0 else train_once(tmp_path_factory, "whole", overrides)  # worker draws differ
    resumed = tmp_path / "resumed"
    status = in_forked_child(lambda: cli("dhr.train", *overrides, f"hydra.run.dir={resumed}",
                                         "+callbacks.killer._target_=kill_callbacks.KillAt", "+callbacks.killer.step=9"))
    assert status == -9  # killed in epoch 2, one step after the mid-epoch checkpoint of step 8
    assert sorted(p.name for p in (reference.dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    resume_and_compare(reference.dir, resumed, overrides)


@pytest.mark.slow
def test_a_killed_and_resumed_ddp_run_ends_exactly_as_the_uninterrupted_ddp_run(tmp_path, tmp_path_factory, synth_root):
    """trainer=ddp_cpu (2 spawned processes, as users run it): each rank resumes its own share of the same order,
    mid-epoch. The uninterrupted reference and the resumed run use forked ranks: the same arithmetic."""
    overrides = resume_overrides(synth_root, 0, "callbacks.progress_bar.terminal=false")
    overrides.remove("~callbacks.progress_bar")
    whole = train_once(tmp_path_factory, "whole_ddp", [*overrides, *DDP_FORK])  # a global batch of 4 over 2 processes
    killed = subprocess.run([sys.executable, "-m", "dhr.train", *overrides, "trainer=ddp_cpu",
                             f"hydra.run.dir={tmp_path / 'resumed'}", "+callbacks.killer._target_=kill_callbacks.KillAllAt",
                             "+callbacks.killer.step=9"],
                            capture_output=True, text=True, cwd=REPO, timeout=600, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resume_and_compare(whole.dir, tmp_path / "resumed", [*overrides, *DDP_FORK])
