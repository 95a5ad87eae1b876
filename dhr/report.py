"""The pipeline's report: one table of every mask the chain made, scored the official way, with figures.

Rows: ``seeds``, ``control_masks`` and ``dhr_masks`` (the train split, against its GT where it has
one); ``baseline``, ``control_final``, ``final`` and ``ceiling`` (the val split). DHR's effect is
DHR minus its control (the same network with relabelling off), for the masks and for the final
model, paired by training seed. ``report.json`` has the shape other tools read::

    {"seeds": [int, ...],                       # the training seed of each repeat (pipeline.repeats)
     "rows": {NAME: {"mIoU": mean percent, "mFPR": fraction, "mFNR": fraction,
                     "per_class_iou": {class: percent}, "std": {"mIoU": .., "mFPR": .., "mFNR": ..,
                     "per_class_iou": {..}} (null with one seed), "n": int, "split": str, "images": int,
                     "protocol": {...}}},
     "runs": {NAME: [{"seed": int, "mIoU": .., "mFPR": .., "mFNR": .., "per_class_iou": {..}}, ...]},
     "effect": {"masks" | "final" | "final_vs_baseline": {"of": [row, row], "mIoU": {"mean", "std", "values"},
                "per_class_iou": {class: {...}}, "verdict": str}},
     "confusion": {"final" | "control_final": {"classes": [...], "counts": [[GT row x predicted column]]}},
     "stages": {NAME: {"status": "ran" | "cached" | "external" | "skipped" (one per seed, "/"-joined when
                they differ), "seconds": float (summed over seeds)}}}

``report.png`` shows a few fixed training images (image, GT, seed, control mask, DHR mask, control
final, final) in the dataset palette; ``per_class.png`` the per-class IoU of every row with its std
as error bars; ``confusion.png`` where the val pixels of each class go, for the final model and its
control.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
ROWS = (("seeds", "seeds"), ("control_masks", "control"), ("dhr_masks", "dhr"), ("baseline", "baseline"),
        ("control_final", "control_final"), ("final", "final"), ("ceiling", "ceiling"))
EFFECTS = (("masks", "dhr_masks", "control_masks"), ("final", "final", "control_final"),
           ("final_vs_baseline", "final", "baseline"))  # the last is not a control: the baseline trains one round
CONFUSION_ROWS = (("control_final", "control_final"), ("final", "final"))
METRICS = ("mIoU", "mFPR", "mFNR")


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
    if "model" in outputs:  # final, control_final, baseline, ceiling: which segmentation model (pipeline.final_model)
        out["model"] = outputs["model"]
    if name == "seeds":
        out["thresholds"] = {"bg_mode": infer.get("bg_mode"), "bg_gamma": infer.get("bg_gamma"),
                             "bg_threshold": infer.get("bg_threshold"),
                             "source": "conf/model/cam.yaml infer.* (fixed defaults, never tuned on GT)"}
    if name in ("dhr_masks", "control_masks"):
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


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample std (ddof 1; null for one value) of the values that exist; each value kept."""
    kept = [float(v) for v in values if v is not None and v == v]
    mean = float(np.mean(kept)) if kept else None
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return {"mean": mean, "std": std, "values": [None if v is None or v != v else float(v) for v in values]}


def aggregate(runs: list[dict[str, Any]], first: dict[str, Any]) -> dict[str, Any]:
    """One row from the same row of every seed: each number as the mean, its std beside it."""
    classes = list(first["per_class_iou"])
    per_class = {c: spread([r["per_class_iou"].get(c) for r in runs]) for c in classes}
    metrics = {m: spread([r[m] for r in runs]) for m in METRICS}
    std = ({**{m: metrics[m]["std"] for m in METRICS}, "per_class_iou": {c: v["std"] for c, v in per_class.items()}}
           if len(runs) > 1 else None)
    return {**{m: metrics[m]["mean"] for m in METRICS}, "per_class_iou": {c: v["mean"] for c, v in per_class.items()},
            "std": std, "n": len(runs), "split": first["split"], "images": first["images"], "protocol": first["protocol"]}


def verdict(stat: dict[str, Any], better: str, worse: str) -> str:
    """What a paired difference says: a side wins only where the mean difference exceeds its std."""
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "not measured"
    if std is None:
        return "one seed: no spread to judge by (pipeline.repeats=3)"
    if abs(mean) <= std:
        return f"within the spread over {len(stat['values'])} seeds: no difference shown"
    return f"{better if mean > 0 else worse} (|mean| > std over {len(stat['values'])} seeds)"


def effects(runs: dict[str, list[dict[str, Any]]], classes: list[str], minor: list[str]) -> dict[str, Any]:
    """DHR minus its control (masks, final model) and minus the 1-round baseline, paired by training seed."""
    out = {}
    for name, a, b in EFFECTS:
        if a not in runs or b not in runs:
            continue
        other = {r["seed"]: r for r in runs[b]}
        pairs = [(r, other[r["seed"]]) for r in runs[a] if r["seed"] in other]  # paired by training seed

        def diff(get: Any, pairs: list = pairs) -> dict[str, Any]:
            values = [None if get(x) is None or get(y) is None else get(x) - get(y) for x, y in pairs]
            return spread(values)

        miou = diff(lambda r: r["mIoU"])
        per_class = {c: diff(lambda r, c=c: r["per_class_iou"].get(c)) for c in classes}
        control = b != "baseline"
        out[name] = {"of": [a, b], "seeds": [x["seed"] for x, _ in pairs], "mIoU": miou, "per_class_iou": per_class, "minor_classes": minor,
                     "verdict": verdict(miou, "DHR better", "the control better" if control else "the baseline better")}
    return out


def confusion_matrix(outputs: dict[str, Any], cfg: DictConfig, info: Any) -> np.ndarray | None:
    """Pixel counts (GT class x predicted class) of a final model's val predictions."""
    from dhr.data.layout import DatasetLayout
    from dhr.ops.evaluation import evaluate_folder

    scores = outputs.get("scores")
    folder = outputs.get("predictions") or (scores and str(Path(scores).parent / Path(scores).name.removesuffix("_scores.json")))
    gt = DatasetLayout(cfg.paths.data_root, info).mask_dir(str(outputs.get("split", "val")))
    if not folder or not Path(folder).is_dir() or not gt.is_dir():
        return None
    result = evaluate_folder(folder, gt, num_classes=info.num_classes, ignore_index=info.ignore_index,
                             background_id=info.background_id, skip_background_only=not info.eval_background_only)
    return result.conf[:, : info.num_classes]


def build_report(cfg: DictConfig, run_dir: Path, repeats: list[tuple[int | None, dict[str, Any]]],
                 key: str) -> dict[str, Any]:
    """Rows (mean over the seeds), effects, confusion and figures (written now); the caller adds the stage
    table and writes the JSON and markdown."""
    from dhr.utils.io import atomic_write_bytes

    info = dataset_info(cfg)
    minor = minor_classes(cfg)
    runs: dict[str, list[dict[str, Any]]] = {}
    firsts: dict[str, dict[str, Any]] = {}
    for row, stage in ROWS:
        scored = []
        for seed, done in repeats:
            result = done.get(stage)
            one = score_row(row, result.outputs, cfg) if result is not None and result.status != "skipped" else None
            if one is not None:
                scored.append((seed, one))
        if scored:
            firsts[row] = scored[0][1]
            runs[row] = [{"seed": seed, **{m: one[m] for m in METRICS}, "per_class_iou": one["per_class_iou"]}
                         for seed, one in scored]
    rows = {row: aggregate(runs[row], firsts[row]) for row in runs}
    effect = effects(runs, list(info.classes), minor)
    counts = {}
    for row, stage in CONFUSION_ROWS:
        matrices = [confusion_matrix(done[stage].outputs, cfg, info) for _, done in repeats
                    if done.get(stage) is not None and done[stage].status != "skipped"]
        if matrices and all(m is not None for m in matrices):
            counts[row] = {"classes": list(info.classes), "counts": np.sum(matrices, axis=0).tolist()}
    figures: dict[str, bytes] = {}
    panels: list[int] = []
    try:
        figures["report.png"], panels = example_grid(cfg, info, repeats[0][1], int(cfg.pipeline.examples))
        figures["per_class.png"] = per_class_chart(rows, list(info.classes), minor)
        if counts:
            figures["confusion.png"] = confusion_chart(counts, minor, len(repeats))
        if effect:
            figures["effect.png"] = effect_chart(effect, list(info.classes), minor)
    except Exception as err:  # noqa: BLE001 - a figure must never cost the numbers
        log.warning("report figures not written: %s", err)
    for name, png in figures.items():
        atomic_write_bytes(run_dir / name, png)
    expected, departure = check_rows(rows, published_numbers(cfg))
    return {"key": key, "dataset": info.name, "classes": list(info.classes), "minor_classes": minor,
            "seeds": [seed for seed, _ in repeats], "rows": rows, "runs": runs,
            "effect": effect, "confusion": counts, "expected": expected,
            "first_departure": departure, "stages": {}, "figures": sorted(figures), "example_panels": panels}


def stage_table(repeats: list[tuple[int | None, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each stage's status (one per seed, "/"-joined where the seeds differ) and seconds summed over the seeds."""
    table = {}
    for name in repeats[0][1]:
        results = [done[name] for _, done in repeats if name in done]
        statuses = list(dict.fromkeys(r.status for r in results))
        table[name] = {"status": "/".join(statuses), "seconds": round(float(sum(r.seconds for r in results)), 1)}
    return table


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


def _pm(row: dict[str, Any], metric: str, digits: int) -> str:
    """``mean ± std`` where the row has a spread, else the number."""
    std = (row.get("std") or {}).get(metric)
    return _fmt(row[metric], digits) + (f" ± {std:.{digits}f}" if std is not None else "")


def _signed(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:+.1f}" + (f" ± {stat['std']:.1f}" if stat["std"] is not None else "")


def _label(name: str, minor: list[str]) -> str:
    return f"{name}*" if name in minor else name


def effect_lines(report: dict[str, Any]) -> list[str]:
    """DHR minus its control (masks, final) and minus the 1-round baseline, as sentences with the spread."""
    titles = {"masks": "DHR masks minus control masks (train)", "final": "final minus control final (val)",
              "final_vs_baseline": "final minus baseline (val; the 1-round baseline is not a control: DHR's route "
                                   "trains twice)"}
    lines = []
    for name, effect in (report.get("effect") or {}).items():
        values = ", ".join(_fmt(v, 1) for v in effect["mIoU"]["values"])
        minor = "; ".join(f"{c} {_signed(effect['per_class_iou'][c])}" for c in effect["minor_classes"]
                          if c in effect["per_class_iou"])
        lines.append(f"{titles[name]}: {_signed(effect['mIoU'])} mIoU (per seed: {values})"
                     + (f"; minor classes: {minor}" if minor else "") + f". Verdict: {effect['verdict']}.")
    return lines


def markdown(report: dict[str, Any]) -> str:
    classes, minor = report["classes"], report["minor_classes"]
    seeds = report.get("seeds") or [None]
    over = (f"Each number is the mean over {len(seeds)} training seeds ({', '.join(map(str, seeds))}), mIoU ± its "
            "sample std; per-seed values are in report.json (`runs`). " if len(seeds) > 1 else "One training seed: "
            "no spread (pipeline.repeats=3 gives mean ± std). ")
    lines = [f"# dhr pipeline report: {report['dataset']}", "",
             over + "mIoU and per-class IoU in %, mFPR and mFNR as fractions (the official evaluator)"
             + ("; * marks the minor classes." if minor else "."), "",
             "| row | split | images | mIoU | mFPR | mFNR | " + " | ".join(_label(c, minor) for c in classes) + " |",
             "|---" * (6 + len(classes)) + "|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['split']} | {row['images']} | {_pm(row, 'mIoU', 1)} | {_pm(row, 'mFPR', 3)} | "
                     f"{_pm(row, 'mFNR', 3)} | " + " | ".join(_fmt(row['per_class_iou'].get(c), 1) for c in classes) + " |")
    if report.get("effect"):
        lines += ["", "## DHR's effect", "",
                  "DHR against its true control: the same network, recipe, losses and mask prediction with relabelling "
                  "off (`model.dhr.enabled=false`), paired by training seed.", ""]
        lines += [f"- {line}" for line in effect_lines(report)]
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
    seeds = report.get("seeds") or [None]
    title = f"dhr pipeline: {report['dataset']} ({run_dir})" + (f", mean ± std over seeds {seeds}" if len(seeds) > 1 else "")
    table = Table(title=title)
    for col in ("row", "split", "mIoU", "mFPR", "mFNR", *[_label(c, minor) for c in classes]):
        table.add_column(col, justify="left" if col in ("row", "split") else "right", no_wrap=True)
    for name, row in report["rows"].items():
        table.add_row(name, str(row["split"]), _pm(row, "mIoU", 1), _fmt(row["mFPR"], 3), _fmt(row["mFNR"], 3),
                      *[_fmt(row["per_class_iou"].get(c), 1) for c in classes])
    width = 60 + sum(max(len(_label(c, minor)), 5) + 3 for c in classes)  # never truncate a name
    Console(width=max(120, width)).print(table)
    for line in [*effect_lines(report), *expected_lines(report)]:
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


def model_predictions(result: Any, ids: list[str], paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """A final model's labels for the example training images (it never predicts the train split otherwise)."""
    import torch

    from dhr.utils.checkpoint import load_module
    from dhr.utils.imagenet import normalize_rgb
    from dhr.utils.io import read_rgb

    if result is None or result.status == "skipped" or not Path(result.outputs.get("ckpt", "")).is_file():
        return {}
    module = load_module(result.outputs["ckpt"])
    module.infer = dict(result.outputs.get("infer") or module.infer)
    out = {}
    for image_id in ids:
        x = torch.from_numpy(normalize_rgb(read_rgb(paths[image_id]))).permute(2, 0, 1)[None]
        with torch.no_grad():
            out[image_id] = module.predict_step({"image": x, "id": [image_id]}, 0)["label"][0].numpy()
    return out


# panel: (stage it shows, kind): a mask folder of the stage, or the stage's model run on the image
PANEL_SOURCES = {"seed": ("seeds", "masks"), "control mask": ("control", "masks"), "DHR mask": ("dhr", "masks"),
                 "control final": ("control_final", "model"), "final": ("final", "model")}


def example_grid(cfg: DictConfig, info: Any, done: dict[str, Any], n: int) -> tuple[bytes, list[int]]:
    """Rows of image, GT and each stage's mask or prediction (control beside DHR), in the dataset palette;
    and [rows, columns]. The stages of one training seed (the first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dhr.data.layout import DatasetLayout
    from dhr.utils.io import read_label_png, read_rgb

    layout = DatasetLayout(cfg.paths.data_root, info)
    ids = example_ids(cfg, info, n)
    paths = layout.image_paths("train")
    palette = info.palette_array
    ran = {name: r for name, r in done.items() if r is not None and r.status != "skipped"}
    panels = ["image", "GT", *[p for p, (stage, _) in PANEL_SOURCES.items() if stage in ran or p in ("DHR mask", "final")]]
    labels: dict[str, dict[str, np.ndarray]] = {}
    for panel in panels[2:]:
        stage, kind = PANEL_SOURCES[panel]
        if kind == "model":
            labels[panel] = model_predictions(ran.get(stage), ids, paths)
        else:
            folder = Path(ran[stage].outputs.get("masks", "-")) if stage in ran else Path("-")
            labels[panel] = {i: read_label_png(folder / f"{i}.png") for i in ids if (folder / f"{i}.png").is_file()}
    gt_dir = layout.mask_dir("train")
    labels["GT"] = {i: read_label_png(gt_dir / f"{i}.png") for i in ids if (gt_dir / f"{i}.png").is_file()}
    fig, axes = plt.subplots(len(ids), len(panels), figsize=(2.2 * len(panels), 2.2 * len(ids)), squeeze=False)
    for r, image_id in enumerate(ids):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(panel, fontsize=9)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=7)
                ax.imshow(np.asarray(read_rgb(paths[image_id])))
                continue
            label = labels[panel].get(image_id)
            if label is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            else:
                ax.imshow(palette[label])
    fig.suptitle(f"{info.name}: training images", fontsize=10)
    return _png(fig), [len(ids), len(panels)]


def per_class_chart(rows: dict[str, Any], classes: list[str], minor: list[str]) -> bytes:
    """Per-class IoU of every row as grouped horizontal bars, the std over seeds as error bars; minor classes starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(classes) * max(1, len(rows)) ** 0.5 + 1.5))
    height = 0.8 / max(1, len(rows))
    y = np.arange(len(classes))
    for k, (name, row) in enumerate(rows.items()):
        values = [row["per_class_iou"].get(c) or 0.0 for c in classes]
        std = (row.get("std") or {}).get("per_class_iou")
        errors = [std.get(c) or 0.0 for c in classes] if std else None
        label = f"{name} ({_pm(row, 'mIoU', 1)})"
        ax.barh(y + k * height, values, height, xerr=errors, label=label, error_kw={"elinewidth": 0.8, "capsize": 1.5})
    ax.set_yticks(y + height * (len(rows) - 1) / 2, [_label(c, minor) for c in classes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)" + (", error bars: std over training seeds" if any(r.get("std") for r in rows.values()) else ""))
    ax.set_xlim(0, 100)
    ax.legend(fontsize=7, loc="lower right", title="row (mIoU)", title_fontsize=7)
    ax.set_title("per-class IoU" + (" (* minor classes)" if minor else ""), fontsize=10)
    return _png(fig)


def effect_chart(effect: dict[str, Any], classes: list[str], minor: list[str]) -> bytes:
    """DHR minus its control (and minus the 1-round baseline), mIoU and per class, paired by seed: mean bars, std
    error bars, each seed's difference as a dot. Right of zero: DHR better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["mIoU", *classes]
    fig, axes = plt.subplots(1, len(effect), figsize=(3.6 * len(effect), 0.32 * len(names) + 1.6), squeeze=False, sharey=True)
    titles = {"masks": "DHR masks - control masks\n(train)", "final": "final - control final\n(val)",
              "final_vs_baseline": "final - baseline (val;\n1 round, not a control)"}
    y = np.arange(len(names))
    for ax, (name, e) in zip(axes[0], effect.items(), strict=True):
        stats = [e["mIoU"], *[e["per_class_iou"][c] for c in classes]]
        means = [s["mean"] if s["mean"] is not None else 0.0 for s in stats]
        errors = [s["std"] or 0.0 for s in stats]
        colours = ["tab:green" if m > 0 else "tab:red" for m in means]
        ax.barh(y, means, xerr=errors, color=colours, alpha=0.6, error_kw={"elinewidth": 0.8, "capsize": 2})
        for k, s in enumerate(stats):
            dots = [v for v in s["values"] if v is not None]
            ax.plot(dots, [k] * len(dots), "k.", markersize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(titles.get(name, name), fontsize=9)
        ax.set_xlabel("difference (IoU points)", fontsize=8)
    axes[0, 0].set_yticks(y, ["mIoU", *[_label(c, minor) for c in classes]], fontsize=8)
    axes[0, 0].invert_yaxis()
    seeds = len(next(iter(effect.values()))["mIoU"]["values"])
    fig.suptitle(f"DHR's effect, paired by training seed ({seeds} seed{'s' if seeds > 1 else ''}; bar: mean, "
                 "line: std, dots: seeds)", fontsize=9)
    return _png(fig)


def confusion_chart(counts: dict[str, Any], minor: list[str], seeds: int) -> bytes:
    """Where each GT class's val pixels go (row-normalised %), for the control's final model and DHR's, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(counts), figsize=(5.2 * len(counts), 4.8), squeeze=False)
    for ax, (name, entry) in zip(axes[0], counts.items(), strict=True):
        matrix = np.asarray(entry["counts"], dtype=np.float64)
        share = 100 * matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        labels = [_label(c, minor) for c in entry["classes"]]
        ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if share[i, j] >= 0.5:
                    ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 60 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        ax.set_title(f"{name} (val, % of each GT class" + (f", {seeds} seeds summed)" if seeds > 1 else ")"), fontsize=9)
    return _png(fig)
