"""A job of a submitit sweep that is pre-empted mid-epoch is requeued by submitit, resumes its own
``last.ckpt`` (``ckpt_path=last``) and ends exactly as the uninterrupted run: the Slurm path, run
with ``hydra/launcher=local`` (submitit's local executor requeues the way Slurm does). The sweep is
launched in this process; submitit runs its job in a process of its own, as on a cluster."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, cli, resume_overrides

pytestmark = pytest.mark.slow


def test_a_preempted_submitit_job_is_requeued_and_ends_as_the_uninterrupted_run(tmp_path, synth_root, resume_reference,
                                                                               monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # the job process imports kill_callbacks
    marker = tmp_path / "preempted"
    sweep = cli("dhr.train", "-m", *resume_overrides(synth_root, 0, "ckpt_path=last"), "hydra/launcher=local",
                f"hydra.sweep.dir={tmp_path / 'sweep'}", "+callbacks.preempt._target_=kill_callbacks.PreemptAt",
                "+callbacks.preempt.step=9", f"+callbacks.preempt.marker={marker}")
    assert sweep.rc == 0, sweep.tail()
    assert marker.is_file()  # the job was pre-empted at step 9, one step after the checkpoint of step 8
    job = tmp_path / "sweep" / "0"
    logs = "\n".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    log = (job / "train.log").read_text()
    assert log.count("Seed set") == 2 and "Restoring states from the checkpoint" in log  # the requeued run resumed
    a = torch.load(resume_reference.ckpt, map_location="cpu", weights_only=True)
    b = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("state_dict", "ema_state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
