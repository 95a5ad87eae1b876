"""last.ckpt has one writer and always holds the newest state; checkpoints are written atomically."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from dhr.callbacks.last_checkpoint import LastCheckpoint
from dhr.utils.atomic_checkpoint import AtomicCheckpointIO


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SaveLog(pl.Callback):
    """Where in training every checkpoint was written."""

    def __init__(self) -> None:
        self.saved: list[tuple[int, int]] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saved.append((checkpoint["global_step"], checkpoint["epoch"]))


def fit(tmp_path, callbacks, **trainer_kw) -> pl.Trainer:
    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 steps an epoch
    ckpt_path = trainer_kw.pop("ckpt_path", None)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path, **trainer_kw)
    trainer.fit(Tiny(), train_dataloaders=loader, val_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


def test_last_checkpoint_is_written_every_n_steps_at_epoch_ends_and_at_the_end(tmp_path):
    log = SaveLog()
    fit(tmp_path, [LastCheckpoint(str(tmp_path / "ck"), every_n_train_steps=2), log], max_epochs=2)
    # steps 2 and 4 mid-epoch, epoch ends at 3 and 6 (step 6 ends the epoch: no step save); the end is saved
    assert log.saved == [(2, 0), (3, 0), (4, 1), (6, 1)]
    assert sorted(os.listdir(tmp_path / "ck")) == ["last.ckpt"]
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "lightning_logs").exists()  # no default writer
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_run_stopped_inside_an_epoch_saves_its_final_step(tmp_path):
    log = SaveLog()
    fit(tmp_path, [LastCheckpoint(str(tmp_path / "ck"), every_n_train_steps=None), log], max_steps=5)
    assert log.saved == [(3, 0), (5, 1)]
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_best_and_last_are_two_files_and_last_is_never_versioned(tmp_path):
    """The default callbacks (conf/callbacks/default.yaml): Lightning's ModelCheckpoint for best.ckpt
    beside LastCheckpoint. Two save_last writers would leave last.ckpt stale beside last-v1.ckpt."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    def callbacks():
        best = ModelCheckpoint(dirpath=str(tmp_path / "ck"), filename="best", monitor="val/loss", mode="min",
                               save_last=False, save_top_k=1, auto_insert_metric_name=False)
        return [best, LastCheckpoint(str(tmp_path / "ck"), every_n_train_steps=2)]

    fit(tmp_path, callbacks(), max_epochs=1)
    fit(tmp_path, callbacks(), max_epochs=2, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))  # resumed
    assert sorted(os.listdir(tmp_path / "ck")) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_resumed_run_removes_the_partial_file_of_a_save_that_was_killed(tmp_path):
    (tmp_path / "ck").mkdir()
    partial = tmp_path / "ck" / ".last.ckpt.x1y2.tmp"  # what atomic_write_bytes leaves when killed mid-write
    partial.write_bytes(b"half")
    (tmp_path / "ck" / ".best.ckpt.a1b2.tmp").write_bytes(b"half")
    other = tmp_path / "ck" / "notes.txt"
    other.write_text("mine")
    fit(tmp_path, [LastCheckpoint(str(tmp_path / "ck"), every_n_train_steps=None)], max_epochs=1)
    assert sorted(os.listdir(tmp_path / "ck")) == ["last.ckpt", "notes.txt"]


def test_every_n_train_steps_must_be_a_step_count(tmp_path):
    with pytest.raises(ValueError, match="every_n_train_steps=0"):
        LastCheckpoint(str(tmp_path), every_n_train_steps=0)


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails_and_uses_the_umask(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.ckpt"]


def save_forever(path) -> None:
    """What a training run does to last.ckpt, as fast as it can: 32 MB saves of a known content."""
    io = AtomicCheckpointIO()
    step = 0
    while True:
        step += 1
        io.save_checkpoint({"step": step, "w": torch.full((8_000_000,), float(step))}, path)


def test_a_process_killed_while_saving_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL at 3 moments of a save loop (as a pre-empted job), in a fork of this process: the file always
    loads whole."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 0, "w": torch.zeros(1)}, path)
    for attempt in range(3):
        pid = os.fork()
        if pid == 0:  # the child saves until it is killed
            try:
                save_forever(path)
            finally:
                os._exit(1)
        time.sleep(0.05 + 0.15 * attempt)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        state = torch.load(path, weights_only=True)
        assert state["w"].eq(float(state["step"])).all()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["last.ckpt"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
