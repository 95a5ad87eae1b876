"""Human-readable tables of per-class scores (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from dhr.ops.evaluation import EvalResult
from dhr.ops.metrics import Scores


def class_table(classes: Sequence[str], scores: Scores, title: str = "") -> None:
    """Print per-class IoU / FPR / FNR and the means."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for col in ("class", "IoU %", "FPR", "FNR"):
        table.add_column(col, justify="left" if col == "class" else "right")

    def fmt(x: float, digits: int) -> str:
        return "-" if x != x else f"{x:.{digits}f}"

    for i, name in enumerate(classes):
        table.add_row(name, fmt(scores.iou[i], 1), fmt(scores.fpr[i], 3), fmt(scores.fnr[i], 3))
    table.add_section()
    table.add_row("mean", fmt(scores.miou, 1), fmt(scores.mfpr, 3), fmt(scores.mfnr, 3))
    Console(width=100).print(table)


def report_result(result: EvalResult, classes: Sequence[str], tag: str, *, title: str, table: bool = True) -> dict:
    """Print the per-class table, the image counts and the official summary line; return the JSON-able numbers.

    Shared by ``dhr.evaluate`` and the evaluation that follows training or prediction.
    """
    from dhr.ops.metrics import summary_line

    scores = result.scores
    if table:
        class_table(classes, scores, title=title)
    print(f"evaluated {result.evaluated} / expected {result.expected} images"
          f" ({len(result.skipped)} background-only skipped)")
    print(summary_line(tag, scores))

    def num(x: float) -> float | None:
        return None if x != x else float(x)  # NaN → null in JSON

    return {
        "tag": tag, "mIoU": scores.miou, "mFPR": scores.mfpr, "mFNR": scores.mfnr,
        "evaluated": result.evaluated, "expected": result.expected,
        "missing": result.missing, "skipped_background_only": len(result.skipped),
        "per_class": {name: {"IoU": num(scores.iou[i]), "FPR": num(scores.fpr[i]), "FNR": num(scores.fnr[i])}
                      for i, name in enumerate(classes)},
    }


EXPECTED_METRICS = ("mIoU", "mFPR", "mFNR", "uss_mIoU")  # uss_mIoU: CAUSE's Hungarian-matched val/uss_mIoU


def compare_expected(measured: float | None, expected: dict, where: str) -> dict:
    """A published number next to a measured one: ``{..., measured, delta, status}``.

    ``expected`` = ``{metric, value, tolerance, source}`` (mIoU in %, mFPR/mFNR as fractions, as
    the evaluator reports them); status is ``within`` when ``|measured - value| <= tolerance``,
    ``outside`` otherwise, ``not measured`` when the run produced no such number.
    """
    from dhr.errors import DHRError

    missing = [k for k in ("metric", "value", "tolerance", "source") if k not in expected]
    if missing:
        raise DHRError(f"{where}: expected needs metric, value, tolerance and source (missing {missing})")
    if expected["metric"] not in EXPECTED_METRICS:
        raise DHRError(f"{where}.metric={expected['metric']!r}: use one of {EXPECTED_METRICS}")
    out = {k: expected[k] for k in ("metric", "value", "tolerance", "source")}
    if measured is None or measured != measured:
        return {**out, "measured": None, "delta": None, "status": "not measured"}
    delta = float(measured) - float(expected["value"])
    return {**out, "measured": float(measured), "delta": delta,
            "status": "within" if abs(delta) <= float(expected["tolerance"]) + 1e-9 else "outside"}


def expected_line(check: dict, name: str) -> str:
    """One printable line: ``final: mIoU 78.9 vs 79.6 ± 1.0 (source): within``."""
    measured = "n/a" if check["measured"] is None else f"{check['measured']:.{1 if check['metric'] == 'mIoU' else 3}f}"
    return (f"{name}: {check['metric']} {measured} vs expected {check['value']} ± {check['tolerance']} "
            f"({check['source']}): {check['status']}")
