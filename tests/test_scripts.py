"""Every script in scripts/ still starts: ``--help`` prints its usage and exits 0 (run in this process, so a
broken import or a renamed function of dhr shows here rather than the day a number is re-measured)."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys

import pytest
from conftest import REPO

SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "scripts").rglob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_script_starts_and_prints_its_usage(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert done.value.code in (0, None), printed.getvalue()[-2000:]
    text = printed.getvalue()
    assert len(text.splitlines()) >= 3 and ("usage" in text.lower() or "python scripts/" in text), text[:500]


def compare(argv: list[str], monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["compare.py", *argv])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "bench" / "compare.py"), run_name="__main__")
        raise SystemExit(0)
    return done.value.code or 0, printed.getvalue()


def test_make_bench_flags_a_ratio_that_moved_by_more_than_20_percent(tmp_path, monkeypatch):
    import json

    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"relabel.ratio_no_crf": {"value": 10.0}, "evaluate.speedup": {"value": 5.0}}))
    (tmp_path / "relabel.json").write_text(json.dumps({"ratio_no_crf": 7.5}))  # -25 %: a regression
    (tmp_path / "evaluate.json").write_text(json.dumps({"speedup": 5.5}))     # +10 %: within
    results = [str(tmp_path / "relabel.json"), str(tmp_path / "evaluate.json"), f"--figures={figures}"]
    rc, out = compare(results, monkeypatch)
    assert rc == 1 and "relabel.ratio_no_crf" in out.splitlines()[-1] and "evaluate.speedup" not in out.splitlines()[-1]
    assert "-25.0%  MOVED" in out and "+10.0%" in out
    rc, out = compare([*results, "--record"], monkeypatch)
    assert rc == 0 and json.loads(figures.read_text())["relabel.ratio_no_crf"]["value"] == 7.5
    rc, out = compare(results, monkeypatch)
    assert rc == 0 and "every figure within 20 %" in out


def test_the_gpu_check_refuses_at_once_without_a_gpu(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check would run")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", f"--out={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "gpu_check.py"), run_name="__main__")
    assert done.value.code == 2 and "no CUDA GPU on this machine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
