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
