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
