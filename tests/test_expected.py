"""Published numbers next to measured ones: within / outside / not measured, and the first row that departs."""

from __future__ import annotations

import pytest

from dhr.errors import DHRError
from dhr.ops.report import compare_expected
from dhr.report import check_rows, expected_lines

PAPER = {"metric": "mIoU", "value": 79.6, "tolerance": 1.0, "source": "README"}


def test_within_outside_and_not_measured():
    assert compare_expected(79.0, PAPER, "x")["status"] == "within"
    assert compare_expected(78.6, PAPER, "x")["status"] == "within"  # the edge counts
    out = compare_expected(77.0, PAPER, "x")
    assert out["status"] == "outside" and out["delta"] == pytest.approx(-2.6)
    assert compare_expected(None, PAPER, "x")["status"] == "not measured"
    with pytest.raises(DHRError, match="missing \\['tolerance', 'source'\\]"):
        compare_expected(1.0, {"metric": "mIoU", "value": 1}, "x")
    with pytest.raises(DHRError, match="x.metric='pAcc'"):
        compare_expected(1.0, {**PAPER, "metric": "pAcc"}, "x")


def test_the_first_departing_row_in_chain_order():
    rows = {"seeds": {"mIoU": 70.0}, "dhr_masks": {"mIoU": 60.0}, "final": {"mIoU": 70.0}}
    expected = {"final": PAPER, "dhr_masks": {**PAPER, "value": 75.0}, "seeds": {**PAPER, "value": 70.5},
                "ceiling": PAPER}
    checks, first = check_rows(rows, expected)
    assert list(checks) == ["seeds", "dhr_masks", "final", "ceiling"]
    assert [c["status"] for c in checks.values()] == ["within", "outside", "outside", "not measured"]
    assert first == "dhr_masks"
    lines = expected_lines({"expected": checks, "first_departure": first})
    assert lines[1] == "dhr_masks: mIoU 60.0 vs expected 75.0 ± 1.0 (README): outside"
    assert lines[-1] == "first stage outside its tolerance: dhr_masks"
    with pytest.raises(DHRError, match="pipeline.expected.uss: not a report row"):
        check_rows(rows, {"uss": PAPER})


PRESETS = sorted(p.stem for p in (__import__("dhr.conf_path", fromlist=["CONFIG_DIR"]).CONFIG_DIR / "preset").glob("*_*_*.yaml")
                 if p.stem != "synthetic_paper")


def test_the_kit_has_a_preset_per_dataset_and_final_model():
    assert {p.split("_")[0] for p in PRESETS} == {"voc", "coco", "context", "ade", "stuff"}
    assert {"voc_mars_deeplabv3plus", "voc_mars_mask2former", "voc_rsepm_deeplabv3plus", "coco_rsepm_deeplabv3plus"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_reproduction_preset_composes_down_to_each_stage(tmp_path, preset):
    """The pipeline preset, its expected numbers, and every stage's run config (official weights resolved lazily)."""
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    from dhr.pipeline import StageResult, compose_step, stage_steps

    cfg = compose_cfg("pipeline", [f"preset={preset}"], tmp_path / "pipe")
    dataset = preset.split("_")[0]
    assert cfg.wss.method == preset.split("_")[1].upper()
    expected = OmegaConf.to_container(cfg.pipeline.expected)
    checks, _ = check_rows({}, expected)
    assert "final" in checks and all(c["status"] == "not measured" for c in checks.values())
    done = {"seeds": StageResult("external", outputs={"masks": str(tmp_path / "seeds")}),
            "uss": StageResult("ran", outputs={"features": str(tmp_path / "f"), "patch": 14}),
            "dhr": StageResult("ran", outputs={"masks": str(tmp_path / "dhr")})}
    common = [f"dataset={dataset}"]
    for stage in ("uss", "dhr", "final", "baseline"):
        for step in stage_steps(stage, cfg, common, done):
            if step.entry != "train":  # predict/features steps carry no backbone group
                continue
            run = compose_step(step, tmp_path / stage, [])
            OmegaConf.resolve(run)
            assert run.model.num_classes == len(run.dataset.classes)
            assert run.model.backbone.pretrained is True or run.model.backbone.get("weights_package")
    final = compose_step(stage_steps("final", cfg, common, done)[0], tmp_path / "final", [])
    assert final.expected.value == expected["final"]["value"]  # the stage's own run prints the same number
