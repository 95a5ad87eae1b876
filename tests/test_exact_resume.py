"""A run killed mid-epoch (SIGKILL, in a real subprocess) and resumed with ckpt_path=last ends with
the weights, EMA and validation scores of the uninterrupted run, bit for bit on the CPU, with the
data loaded in the main process and in a worker process."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_train_overrides

pytestmark = pytest.mark.slow

KILLER = '''
import os, signal
import pytorch_lightning as pl

class KillAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no checkpoint: as a pre-empted job
'''


def train(tmp_path, run: str, overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dhr.train", *overrides, *extra, f"hydra.run.dir={tmp_path / run}"],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})


def last_val(run_dir) -> list[str]:
    rows = [r for f in sorted((run_dir / "csv").glob("version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    return [r["val/mIoU"] for r in rows if r.get("val/mIoU")]


def resume_and_compare(tmp_path, overrides: list[str]) -> None:
    """Resume the run killed at step 9 (checkpoint of step 8): it ends as the uninterrupted one, bit for bit."""
    partial = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert partial["global_step"] == 8
    resumed = train(tmp_path, "resumed", overrides, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("state_dict", "ema_state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    assert last_val(tmp_path / "whole")[-1] == last_val(tmp_path / "resumed")[-1]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_killed_and_resumed_run_ends_exactly_as_the_uninterrupted_one(tmp_path, synth_root, workers):
    (tmp_path / "killer.py").write_text(KILLER)
    overrides = [o for o in tiny_train_overrides(synth_root)
                 if not o.startswith(("trainer.limit_train_batches", "recipe.max_epochs", "recipe.num_workers", "~callbacks"))]
    overrides += ["recipe.max_epochs=2", f"recipe.num_workers={workers}", "evaluate_after_fit=false",
                  "callbacks.progress_bar.terminal=false", "callbacks.last_checkpoint.every_n_train_steps=2"]
    whole = train(tmp_path, "whole", overrides)  # 6 steps per epoch, 12 in all
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    killed = train(tmp_path, "resumed", overrides, "+callbacks.killer._target_=killer.KillAt", "+callbacks.killer.step=9")
    assert killed.returncode == -9  # killed in epoch 2, one step after the mid-epoch checkpoint of step 8
    resume_and_compare(tmp_path, overrides)
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert log.count("Seed set") == 2 and "Restoring states from the checkpoint" in log  # one log, appended


GROUP_KILLER = '''
import os, signal
import pytorch_lightning as pl

class KillAllAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGKILL)  # the launcher and every rank at once, as a pre-empted node
'''


def test_a_killed_and_resumed_ddp_run_ends_exactly_as_the_uninterrupted_ddp_run(tmp_path, synth_root):
    """trainer=ddp_cpu (2 processes): each rank resumes its own share of the same order, mid-epoch."""
    (tmp_path / "group_killer.py").write_text(GROUP_KILLER)
    overrides = [o for o in tiny_train_overrides(synth_root)
                 if not o.startswith(("trainer.limit_train_batches", "recipe.max_epochs", "~callbacks"))]
    overrides += ["trainer=ddp_cpu", "recipe.max_epochs=2", "evaluate_after_fit=false",
                  "callbacks.progress_bar.terminal=false", "callbacks.last_checkpoint.every_n_train_steps=2"]
    whole = train(tmp_path, "whole", overrides)  # a global batch of 4 over 2 processes: 6 steps per epoch
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = subprocess.run([sys.executable, "-m", "dhr.train", *overrides, f"hydra.run.dir={tmp_path / 'resumed'}",
                             "+callbacks.killer._target_=group_killer.KillAllAt", "+callbacks.killer.step=9"],
                            capture_output=True, text=True, cwd=REPO, timeout=600, start_new_session=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resume_and_compare(tmp_path, overrides)
