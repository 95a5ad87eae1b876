"""Entropic optimal transport exactly as DHR uses it (``dhr-method.md`` §6), batched in torch.

For a similarity S (cells x classes, values in [0, 1]): cost 1 - S, kernel exp(-cost / eps),
uniform marginals, r = c = 1, at most ``max_iter`` updates r <- a / (K c), c <- b / (K^T r),
stopping when mean |r - r_prev| < ``tol`` (an absolute test on r, so it stops early, as the
release does), plan diag(r) K diag(c), then per-column min-max over the cells. The plan is a
re-weighting map, never arg-maxed.

Batching: each sample may use a subset of rows (valid cells) and columns (its classes), given
as boolean masks; every sample runs its own stopping test and freezes once it has stopped, so
the result equals running each sample alone.
"""

from __future__ import annotations

import torch

PLAN_FLOOR = 1e-5  # min-max floor of the normalised plan (fixed in the spec)


def _masks(s: torch.Tensor, row_mask: torch.Tensor | None, col_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    b, m, n = s.shape
    rows = torch.ones(b, m, dtype=torch.bool, device=s.device) if row_mask is None else row_mask.to(s.device, torch.bool)
    cols = torch.ones(b, n, dtype=torch.bool, device=s.device) if col_mask is None else col_mask.to(s.device, torch.bool)
    if rows.shape != (b, m) or cols.shape != (b, n):
        raise ValueError(f"masks {tuple(rows.shape)}, {tuple(cols.shape)} do not fit S {tuple(s.shape)}")
    return rows, cols


@torch.no_grad()
def sinkhorn_plan(
    s: torch.Tensor,
    row_mask: torch.Tensor | None = None,
    col_mask: torch.Tensor | None = None,
    *,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-2,
    log_domain: bool = False,
    return_iters: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Normalised plans (B, M, N) for similarities ``s`` (B, M, N) or (M, N); 0 outside the masks.

    ``log_domain`` keeps the same init, update order and stopping test (on exp of the log
    scalings) for inputs whose kernel would underflow. ``return_iters`` also returns the
    number of updates each sample ran (B,).
    """
    squeeze = s.ndim == 2
    if squeeze:
        s = s[None]
        row_mask = None if row_mask is None else row_mask[None]
        col_mask = None if col_mask is None else col_mask[None]
    s = s.float()
    rows, cols = _masks(s, row_mask, col_mask)
    b, m, n = s.shape
    n_rows = rows.sum(1).clamp_min(1).float()  # (B,)
    n_cols = cols.sum(1).clamp_min(1).float()
    pair = rows[:, :, None] & cols[:, None, :]
    a = torch.where(rows, 1.0 / n_rows[:, None], 0.0)
    bm = torch.where(cols, 1.0 / n_cols[:, None], 0.0)
    log_k = torch.where(pair, -(1.0 - s) / eps, float("-inf"))
    kernel = log_k.exp()
    r = rows.float()
    c = cols.float()
    active = rows.any(1) & cols.any(1)
    iters = torch.zeros(b, dtype=torch.long, device=s.device)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        r_prev = r
        if log_domain:
            log_c = torch.where(cols, c.clamp_min(1e-38).log(), float("-inf"))
            kc_log = torch.logsumexp(log_k + log_c[:, None, :], dim=2)
            r_new = torch.where(rows, (a.clamp_min(1e-38).log() - kc_log).exp(), 0.0)
            log_r = torch.where(rows, r_new.clamp_min(1e-38).log(), float("-inf"))
            kr_log = torch.logsumexp(log_k + log_r[:, :, None], dim=1)
            c_new = torch.where(cols, (bm.clamp_min(1e-38).log() - kr_log).exp(), 0.0)
        else:
            kc = torch.einsum("bmn,bn->bm", kernel, c)
            r_new = torch.where(rows, a / kc.clamp_min(1e-38), 0.0)
            kr = torch.einsum("bmn,bm->bn", kernel, r_new)
            c_new = torch.where(cols, bm / kr.clamp_min(1e-38), 0.0)
        keep = active[:, None]
        r = torch.where(keep, r_new, r)
        c = torch.where(keep, c_new, c)
        iters += active.long()
        change = ((r - r_prev).abs() * rows).sum(1) / n_rows
        active = active & ~(change < tol)
    plan = r[:, :, None] * kernel * c[:, None, :]
    lo = torch.where(pair, plan, float("inf")).amin(1, keepdim=True)
    hi = torch.where(pair, plan, float("-inf")).amax(1, keepdim=True)
    plan = torch.where(pair, (plan - lo) / (hi - lo).clamp_min(PLAN_FLOOR), 0.0)
    if squeeze:
        plan, iters = plan[0], iters[0]
    return (plan, iters) if return_iters else plan
