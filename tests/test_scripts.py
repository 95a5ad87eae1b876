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
