"""The pipeline's report: one table of every mask the chain made, scored the official way, with figures.

Rows: ``seeds`` and ``dhr_masks`` (the train split, against its GT where it has one), ``final``,
``baseline`` and ``ceiling`` (the val split). ``report.json`` has the shape other tools read::

    {"rows": {NAME: {"mIoU": percent, "mFPR": fraction, "mFNR": fraction,
                     "per_class_iou": {class: percent}, "split": str, "images": int, "protocol": {...}}},
     "stages": {NAME: {"status": "ran" | "cached" | "external" | "skipped", "seconds": float}}}

``report.png`` shows a few fixed training images (image, GT, seed, DHR mask, final prediction)
in the dataset palette; ``per_class.png`` the per-class IoU of every row.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
ROWS = (("seeds", "seeds"), ("dhr_masks", "dhr"), ("final", "final"), ("baseline", "baseline"), ("ceiling", "ceiling"))
PANELS = ("image", "GT", "seed", "DHR mask", "final")


def dataset_info(cfg: DictConfig) -> Any:
    from dhr.data.layout import DatasetInfo

    return DatasetInfo.from_cfg(OmegaConf.to_container(cfg.dataset, resolve=True))


def minor_classes(cfg: DictConfig) -> list[str]:
    """``dataset.minor_classes``: the small, rare classes DHR is meant to rescue (marked in the report)."""
    return [str(c) for c in (cfg.dataset.get("minor_classes") or [])]


def protocol(name: str, outputs: dict[str, Any]) -> dict[str, Any]:
    """How a row was produced: split, scales, flip, CRF and every threshold with where it came from."""
    infer = outputs.get("infer") or {}
    out: dict[str, Any] = {"split": outputs.get("split"), "scales": infer.get("scales"), "flip": infer.get("flip"),
                           "crf": bool(infer.get("crf", False))}
    if "source" in outputs:
        return {**out, "made_by": outputs["source"], "scales": None, "flip": None, "crf": None}
    if "model" in outputs:  # final, baseline, ceiling: which segmentation model (pipeline.final_model)
        out["model"] = outputs["model"]
    if name == "seeds":
        out["thresholds"] = {"bg_mode": infer.get("bg_mode"), "bg_gamma": infer.get("bg_gamma"),
                             "bg_threshold": infer.get("bg_threshold"),
                             "source": "conf/model/cam.yaml infer.* (fixed defaults, never tuned on GT)"}
    if name == "dhr_masks":
        out["thresholds"] = {"class_threshold": infer.get("threshold"),
                             "source": "conf/model/dhr.yaml infer.threshold (the release's 0.05)"}
    return out


def score_row(name: str, outputs: dict[str, Any], cfg: DictConfig) -> dict[str, Any] | None:
    """A row from the scores JSON a stage wrote, or scored here for external seeds."""
    scores_path = outputs.get("scores")
    if scores_path and Path(scores_path).is_file():
        scores = json.loads(Path(scores_path).read_text())
    elif "source" in outputs:  # external seeds: score them against the train GT here
        from dhr.data.layout import DatasetLayout
        from dhr.ops.evaluation import evaluate_folder
        from dhr.ops.report import report_result

        info = dataset_info(cfg)
        gt = DatasetLayout(cfg.paths.data_root, info).mask_dir("train")
        if not gt.is_dir():
            return None
        result = evaluate_folder(outputs["masks"], gt, num_classes=info.num_classes, ignore_index=info.ignore_index,
                                 background_id=info.background_id, skip_background_only=not info.eval_background_only)
        scores = report_result(result, info.classes, name, title=name, table=False)
    else:
        return None
    return {"mIoU": scores["mIoU"], "mFPR": scores["mFPR"], "mFNR": scores["mFNR"],
            "per_class_iou": {k: v["IoU"] for k, v in scores["per_class"].items()},
            "split": outputs.get("split"), "images": scores["evaluated"], "protocol": protocol(name, outputs)}


def build_report(cfg: DictConfig, run_dir: Path, done: dict[str, Any], key: str) -> dict[str, Any]:
    """Rows and figures (written now); the caller adds the stage table and writes the JSON and markdown."""
    from dhr.utils.io import atomic_write_bytes

    rows = {}
    for row, stage in ROWS:
        result = done.get(stage)
        if result is not None and result.status != "skipped":
            scored = score_row(row, result.outputs, cfg)
            if scored is not None:
                rows[row] = scored
    info = dataset_info(cfg)
    minor = minor_classes(cfg)
    figures: dict[str, bytes] = {}
    panels: list[int] = []
    try:
        figures["report.png"], panels = example_grid(cfg, info, done, int(cfg.pipeline.examples))
        figures["per_class.png"] = per_class_chart(rows, list(info.classes), minor)
    except Exception as err:  # noqa: BLE001 - a figure must never cost the numbers
        log.warning("report figures not written: %s", err)
    for name, png in figures.items():
        atomic_write_bytes(run_dir / name, png)
    expected, departure = check_rows(rows, published_numbers(cfg))
    return {"key": key, "dataset": info.name, "classes": list(info.classes), "minor_classes": minor,
            "rows": rows, "expected": expected, "first_departure": departure, "stages": {}, "figures": sorted(figures),
            "example_panels": panels}


def published_numbers(cfg: DictConfig) -> dict[str, Any]:
    """``pipeline.expected`` as a plain dict (empty when no preset sets it)."""
    node = cfg.pipeline.get("expected")
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}  # type: ignore[return-value]


def check_rows(rows: dict[str, Any], expected: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Each row with a published number, within or outside its tolerance; the first row (chain order) outside."""
    from dhr.errors import DHRError
    from dhr.ops.report import compare_expected

    known = [name for name, _ in ROWS]
    unknown = sorted(set(expected) - set(known))
    if unknown:
        raise DHRError(f"pipeline.expected.{unknown[0]}: not a report row; rows are {known}")
    checks = {}
    for name in known:
        if name in expected:
            row = rows.get(name)
            metric = expected[name].get("metric")
            checks[name] = compare_expected(row.get(metric) if row else None, expected[name], f"pipeline.expected.{name}")
    departure = next((n for n, c in checks.items() if c["status"] == "outside"), None)
    return checks, departure


def expected_lines(report: dict[str, Any]) -> list[str]:
    """The paper comparison as text lines (empty without published numbers)."""
    from dhr.ops.report import expected_line

    checks = report.get("expected") or {}
    if not checks:
        return []
    lines = [expected_line(c, name) for name, c in checks.items()]
    departure = report.get("first_departure")
    lines.append(f"first stage outside its tolerance: {departure}" if departure
                 else "every measured row is within its tolerance")
    return lines


def write_report(report: dict[str, Any], run_dir: Path) -> None:
    from dhr.utils.io import atomic_write_bytes, atomic_write_json

    atomic_write_json(run_dir / "report.json", report)
    atomic_write_bytes(run_dir / "report.md", markdown(report).encode())


# -- text -------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _label(name: str, minor: list[str]) -> str:
    return f"{name}*" if name in minor else name


def markdown(report: dict[str, Any]) -> str:
    classes, minor = report["classes"], report["minor_classes"]
    lines = [f"# dhr pipeline report: {report['dataset']}", "",
             "mIoU and per-class IoU in %, mFPR and mFNR as fractions (the official evaluator); "
             + ("* marks the minor classes." if minor else ""), "",
             "| row | split | images | mIoU | mFPR | mFNR | " + " | ".join(_label(c, minor) for c in classes) + " |",
             "|---" * (6 + len(classes)) + "|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['split']} | {row['images']} | {_fmt(row['mIoU'], 1)} | {_fmt(row['mFPR'], 3)} | "
                     f"{_fmt(row['mFNR'], 3)} | " + " | ".join(_fmt(row['per_class_iou'].get(c), 1) for c in classes) + " |")
    if report.get("expected"):
        lines += ["", "## Against the published numbers", ""] + [f"- {line}" for line in expected_lines(report)]
    lines += ["", "## Protocol", ""]
    for name, row in report["rows"].items():
        lines.append(f"- **{name}**: " + json.dumps(row["protocol"], sort_keys=True))
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in report["stages"].items()]
    lines += ["", *[f"![{f}]({f})" for f in report.get("figures", [])], ""]
    return "\n".join(lines)


def print_report(report: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    classes, minor = report["classes"], report["minor_classes"]
    table = Table(title=f"dhr pipeline: {report['dataset']} ({run_dir})")
    for col in ("row", "split", "mIoU", "mFPR", "mFNR", *[_label(c, minor) for c in classes]):
        table.add_column(col, justify="left" if col in ("row", "split") else "right", no_wrap=True)
    for name, row in report["rows"].items():
        table.add_row(name, str(row["split"]), _fmt(row["mIoU"], 1), _fmt(row["mFPR"], 3), _fmt(row["mFNR"], 3),
                      *[_fmt(row["per_class_iou"].get(c), 1) for c in classes])
    width = 50 + sum(max(len(_label(c, minor)), 5) + 3 for c in classes)  # never truncate a name
    Console(width=max(120, width)).print(table)
    for line in expected_lines(report):
        print(line)
    print("stages: " + ", ".join(f"{k} {v['status']} ({v['seconds']} s)" for k, v in report["stages"].items()))
    print(f"report: {run_dir / 'report.md'}")


# -- figures ----------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def example_ids(cfg: DictConfig, info: Any, n: int) -> list[str]:
    """n fixed training images: those whose GT holds a minor class first, in id order."""
    from dhr.data.layout import DatasetLayout
    from dhr.utils.io import read_label_png

    layout = DatasetLayout(cfg.paths.data_root, info)
    ids = layout.ids("train")
    gt_dir = layout.mask_dir("train")
    minor = {info.classes.index(c) for c in minor_classes(cfg) if c in info.classes}
    if not minor or not gt_dir.is_dir():
        return ids[:n]
    with_minor = [i for i in ids[: 20 * n] if minor & set(np.unique(read_label_png(gt_dir / f"{i}.png")).tolist())]
    return (with_minor + [i for i in ids if i not in with_minor])[:n]


def final_predictions(done: dict[str, Any], ids: list[str], paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """The final model's labels for the example training images (it never predicts the train split otherwise)."""
    import torch

    from dhr.utils.checkpoint import load_module
    from dhr.utils.imagenet import normalize_rgb
    from dhr.utils.io import read_rgb

    final = done.get("final")
    if final is None or final.status == "skipped" or not Path(final.outputs.get("ckpt", "")).is_file():
        return {}
    module = load_module(final.outputs["ckpt"])
    module.infer = dict(final.outputs.get("infer") or module.infer)
    out = {}
    for image_id in ids:
        x = torch.from_numpy(normalize_rgb(read_rgb(paths[image_id]))).permute(2, 0, 1)[None]
        with torch.no_grad():
            out[image_id] = module.predict_step({"image": x, "id": [image_id]}, 0)["label"][0].numpy()
    return out


def example_grid(cfg: DictConfig, info: Any, done: dict[str, Any], n: int) -> tuple[bytes, list[int]]:
    """Rows of image, GT, seed, DHR mask and final prediction, in the dataset palette; and [rows, columns]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dhr.data.layout import DatasetLayout
    from dhr.utils.io import read_label_png, read_rgb

    layout = DatasetLayout(cfg.paths.data_root, info)
    ids = example_ids(cfg, info, n)
    paths = layout.image_paths("train")
    palette = info.palette_array
    folders = {"GT": layout.mask_dir("train"), "seed": Path(done["seeds"].outputs.get("masks", "-")),
               "DHR mask": Path(done["dhr"].outputs.get("masks", "-")) if done.get("dhr") else Path("-")}
    finals = final_predictions(done, ids, paths)
    fig, axes = plt.subplots(len(ids), len(PANELS), figsize=(2.2 * len(PANELS), 2.2 * len(ids)), squeeze=False)
    for r, image_id in enumerate(ids):
        for c, panel in enumerate(PANELS):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(panel, fontsize=9)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=7)
                ax.imshow(np.asarray(read_rgb(paths[image_id])))
                continue
            label = finals.get(image_id) if panel == "final" else None
            if panel != "final" and (folders[panel] / f"{image_id}.png").is_file():
                label = read_label_png(folders[panel] / f"{image_id}.png")
            if label is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            else:
                ax.imshow(palette[label])
    fig.suptitle(f"{info.name}: training images", fontsize=10)
    return _png(fig), [len(ids), len(PANELS)]


def per_class_chart(rows: dict[str, Any], classes: list[str], minor: list[str]) -> bytes:
    """Per-class IoU of every row as grouped horizontal bars; minor classes starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(classes) * max(1, len(rows)) ** 0.5 + 1.5))
    height = 0.8 / max(1, len(rows))
    y = np.arange(len(classes))
    for k, (name, row) in enumerate(rows.items()):
        values = [row["per_class_iou"].get(c) or 0.0 for c in classes]
        ax.barh(y + k * height, values, height, label=f"{name} ({row['mIoU']:.1f})")
    ax.set_yticks(y + height * (len(rows) - 1) / 2, [_label(c, minor) for c in classes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=7, loc="lower right", title="row (mIoU)", title_fontsize=7)
    ax.set_title("per-class IoU" + (" (* minor classes)" if minor else ""), fontsize=10)
    return _png(fig)
