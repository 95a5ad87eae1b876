"""Sinkhorn of dhr-method.md §6: marginals, pinned stopping, POT agreement, batching, log domain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dhr.ops.sinkhorn import sinkhorn_plan


def literal_sinkhorn(s: np.ndarray, eps: float = 0.1, max_iter: int = 100, tol: float = 1e-2):
    """The spec's loop, one sample, float64: raw plan, normalised plan, iteration count."""
    m, n = s.shape
    k = np.exp(-(1 - s) / eps)
    a, b = np.full(m, 1 / m), np.full(n, 1 / n)
    r, c = np.ones(m), np.ones(n)
    iters = 0
    while iters < max_iter:
        iters += 1
        r_prev = r
        r = a / (k @ c)
        c = b / (k.T @ r)
        if np.mean(np.abs(r - r_prev)) < tol:
            break
    t = r[:, None] * k * c[None]
    lo, hi = t.min(0), t.max(0)
    return t, (t - lo) / np.maximum(hi - lo, 1e-5), iters


def test_matches_the_literal_loop_and_pins_the_iteration_count():
    rng = np.random.default_rng(0)
    s = rng.random((64, 3))
    _, ref, ref_iters = literal_sinkhorn(s)
    plan, iters = sinkhorn_plan(torch.tensor(s, dtype=torch.float32), return_iters=True)
    assert int(iters) == ref_iters == 5  # pinned: the absolute tolerance on r stops it early
    torch.testing.assert_close(plan, torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=1e-4)
    # one class: always two iterations
    assert int(sinkhorn_plan(torch.rand(50, 1), return_iters=True)[1]) == 2


def test_column_sums_of_the_raw_plan_equal_one_over_n():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5):
        raw, _, _ = literal_sinkhorn(rng.random((100, n)))
        np.testing.assert_allclose(raw.sum(0), 1 / n, rtol=1e-9)


def test_converged_plan_agrees_with_pot():
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(2)
    s = rng.random((40, 4))
    m, n = s.shape
    ref = ot.sinkhorn(np.full(m, 1 / m), np.full(n, 1 / n), 1 - s, reg=0.1, numItermax=5000, stopThr=1e-14)
    lo, hi = ref.min(0), ref.max(0)
    ref = (ref - lo) / np.maximum(hi - lo, 1e-5)
    plan = sinkhorn_plan(torch.tensor(s, dtype=torch.float64).float(), max_iter=5000, tol=1e-12)
    torch.testing.assert_close(plan, torch.tensor(ref, dtype=torch.float32), atol=2e-4, rtol=1e-3)


def test_masked_batch_equals_samples_run_alone():
    torch.manual_seed(0)
    s = torch.rand(3, 30, 5)
    rows = torch.rand(3, 30) > 0.3
    cols = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    plan, iters = sinkhorn_plan(s, rows, cols, return_iters=True)
    for i in range(3):
        alone, it = sinkhorn_plan(s[i][rows[i]][:, cols[i]], return_iters=True)
        assert int(iters[i]) == int(it)
        torch.testing.assert_close(plan[i][rows[i]][:, cols[i]], alone, atol=1e-6, rtol=1e-5)
        assert plan[i][~rows[i]].abs().sum() == 0 and plan[i][:, ~cols[i]].abs().sum() == 0


def test_log_domain_agrees():
    torch.manual_seed(1)
    s = torch.rand(4, 100, 3)
    p, it = sinkhorn_plan(s, return_iters=True)
    q, it_log = sinkhorn_plan(s, log_domain=True, return_iters=True)
    assert torch.equal(it, it_log)
    torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


def test_ot_boosts_a_small_blob():
    """Large blob + small blob: after re-weighting the small class wins more cells."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    big = torch.exp(-((yy - 12) ** 2 + (xx - 12) ** 2) / (2 * 9.0**2))
    small = 0.6 * torch.exp(-((yy - 26) ** 2 + (xx - 26) ** 2) / (2 * 2.5**2))
    maps = torch.stack([big, small]).flatten(1).t()  # cells x classes
    before = (maps.argmax(1) == 1).sum()
    after = ((maps * sinkhorn_plan(maps)).argmax(1) == 1).sum()
    assert after > before
