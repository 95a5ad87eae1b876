"""Without the ``[crf]`` extra every dense CRF runs on the PyTorch port: pydensecrf is hidden from this process
(``import pydensecrf`` fails, ``find_spec`` finds nothing, as on a machine without a compiler) and every
caller of the CRF still runs: the online relabelling of DHR training, DHR masks, CAM seeds, CRF-refined
predictions and CAUSE's CRF evaluation. An explicit ``crf.backend=pydensecrf`` is refused with the fix."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import compose_cfg, dhr_overrides, predict_overrides, tiny_cause_overrides

from dhr.errors import DHRError
from dhr.ops.crf import CRFParams, pydensecrf_installed


@pytest.fixture()
def no_pydensecrf(monkeypatch):
    for name in [m for m in sys.modules if m == "pydensecrf" or m.startswith("pydensecrf.")] + ["pydensecrf"]:
        monkeypatch.setitem(sys.modules, name, None)  # None: import raises ImportError, find_spec returns None
    with pytest.raises(ImportError):
        import pydensecrf.densecrf  # noqa: F401
    assert not pydensecrf_installed()


def test_auto_is_the_torch_port_and_an_explicit_pydensecrf_names_the_fix(no_pydensecrf):
    assert CRFParams.defaults().backend_for(torch.device("cpu")) == "torch"
    with pytest.raises(DHRError, match=r"pydensecrf is not installed: pip install -e '\.\[crf\]'.*crf.backend=torch"):
        CRFParams.defaults(backend="pydensecrf")


def test_every_crf_caller_runs_on_the_torch_port(no_pydensecrf, tmp_path, synth_root, dhr_inputs, deeplab_run, cam_run):
    from dhr.predict import run as predict
    from dhr.train import run as train

    seeds, _ = dhr_inputs
    run_dir = tmp_path / "dhr"
    train(compose_cfg("train", dhr_overrides(synth_root, seeds, "evaluate_after_fit=false", "trainer.limit_train_batches=1",
                                             "crf.processes=2"), run_dir))  # Steps 1 and 2-3 run the CRF
    jobs = {"dhr_masks": (run_dir / "checkpoints" / "last.ckpt", ["model=dhr", "split=train"], 24),
            "cam_seeds": (cam_run.ckpt, ["model=cam", "split=val"], 8),
            "refined": (deeplab_run.ckpt, ["infer.crf=true", f"out_dir={tmp_path / 'refined'}"], 8)}
    for name, (ckpt, extra, count) in jobs.items():
        result = predict(compose_cfg("predict", predict_overrides(synth_root, ckpt, f"paths.wss_root={tmp_path / 'wss'}",
                                                                  *extra), tmp_path / name))
        assert result["written"] == count and {"scores", "scores_label"} <= set(result), name  # with and without the CRF
    cause = train(compose_cfg("train", [*tiny_cause_overrides(synth_root), "model.eval_crf=true", "evaluate_after_fit=false"],
                              tmp_path / "cause"))
    assert cause["uss/cause_crf_mIoU"] > 0
    assert sys.modules["pydensecrf"] is None  # nothing imported it behind the fixture's back
