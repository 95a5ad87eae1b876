"""A job of a submitit sweep that is pre-empted mid-epoch is requeued by submitit, resumes its own
``last.ckpt`` (``ckpt_path=last``) and ends exactly as the uninterrupted run: the Slurm path, run
with ``hydra/launcher=local`` (submitit's local executor requeues the way Slurm does)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_train_overrides

pytestmark = pytest.mark.slow

PREEMPTER = '''
import os
from pathlib import Path

import pytorch_lightning as pl
from submitit.local.local import LocalJobEnvironment


class PreemptAt(pl.Callback):
    """Sends the job the signal a scheduler sends on pre-emption, once (the marker remembers)."""

    def __init__(self, step, marker):
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), LocalJobEnvironment._usr_sig())
'''


def test_a_preempted_submitit_job_is_requeued_and_ends_as_the_uninterrupted_run(tmp_path, synth_root):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    (tmp_path / "preempter.py").write_text(PREEMPTER)
    overrides = [o for o in tiny_train_overrides(synth_root)
                 if not o.startswith(("trainer.limit_train_batches", "recipe.max_epochs", "~callbacks"))]
    overrides += ["recipe.max_epochs=2", "evaluate_after_fit=false", "callbacks.progress_bar.terminal=false",
                  "callbacks.last_checkpoint.every_n_train_steps=2", "ckpt_path=last"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def run(*args: str, multirun: bool = False) -> subprocess.CompletedProcess:
        flags = ["-m"] if multirun else []
        return subprocess.run([sys.executable, "-m", "dhr.train", *flags, *overrides, *args], capture_output=True,
                              text=True, cwd=REPO, timeout=900, env=env)

    whole = run(f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    marker = tmp_path / "preempted"
    sweep = run("hydra/launcher=local", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                "+callbacks.preempt._target_=preempter.PreemptAt", "+callbacks.preempt.step=9",
                f"+callbacks.preempt.marker={marker}", multirun=True)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert marker.is_file()  # the job was pre-empted at step 9, one step after the checkpoint of step 8
    job = tmp_path / "sweep" / "0"
    logs = "\n".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    log = (job / "train.log").read_text()
    assert log.count("Seed set") == 2 and "Restoring states from the checkpoint" in log  # the requeued run resumed
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("state_dict", "ema_state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
