"""Human-readable tables of per-class scores (rich)."""

from __future__ import annotations

from collections.abc import Sequence

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
