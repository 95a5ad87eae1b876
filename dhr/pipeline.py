"""``python -m dhr.pipeline``: the weakly-supervised chain in one command, cached stage by stage.

Stages, in order (``dhr-method.md`` §2):

* ``seeds``    the CAM classifier and its seeds of the train split (nothing when ``wss=`` brings seeds);
* ``uss``      CAUSE, then its features of the train split (nothing when ``pipeline.uss_dir`` is given);
* ``dhr``      DHR training on the seeds and features, then the DHR masks of the train split;
* ``control``  the true control of ``dhr``: the same network, recipe, losses and mask prediction with
  relabelling off (``model.dhr.enabled=false``), then its masks of the train split (``pipeline.control``);
  it reads no USS feature, so one control serves every feature choice;
* ``final``    the segmentation model (``pipeline.final_model``) trained on the DHR masks;
* ``control_final`` the same model trained on the control's masks: DHR's effect is final minus this;
* ``baseline`` the same model trained on the seeds: one round of training, no second round at all;
* ``ceiling``  the same model on the GT masks (``pipeline.ceiling=true``);
* ``report``   ``report.md``/``.json``/``.png``, ``per_class.png`` and the table printed at the end.

Every stage is ordinary ``dhr.train`` / ``dhr.predict`` / ``dhr.features`` runs composed in this
process, in ``<run dir>/<stage>-<key>/``, where the key hashes the stage's resolved configs and the
run ids of the stages it reads. A stage whose folder holds a finished manifest is skipped, so a
changed setting re-runs its stage and what reads it, nothing else, and an older result is never
overwritten. A failed stage keeps its finished steps (and its last checkpoint): the next run
resumes there. Overrides the pipeline does not know (``model.dhr.tau=0.5``, ``trainer=ddp``) go to
every stage whose config has that key; ``pipeline.overrides.<stage>=[...]`` scopes them to one stage
(and to its control: ``control`` and ``control_final`` take the overrides of ``dhr`` and ``final`` first).

``pipeline.repeats=N`` runs every stage that trains N times, with training seeds ``seed`` .. ``seed+N-1``
(each seed its own cached stage folders); the report gives each row as mean ± std over the seeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.utils.cli import hydra_entry

log = logging.getLogger(__name__)
STAGES = ("seeds", "uss", "dhr", "control", "final", "control_final", "baseline", "ceiling", "report")
READS = {"seeds": (), "uss": (), "dhr": ("seeds", "uss"), "control": ("seeds",), "final": ("dhr",),
         "control_final": ("control",), "baseline": ("seeds",), "ceiling": (),
         "report": ("seeds", "dhr", "control", "final", "control_final", "baseline", "ceiling")}
CONTROL_OF = {"control": "dhr", "control_final": "final"}  # each control: the stage it copies, relabelling off
# the control: relabelling off, and so no USS feature to read (one control serves every feature choice)
CONTROL_SWITCHES = ("model.dhr.enabled=false", "data.uss_dir=null")
MANIFEST = "manifest.json"
REPORT_VERSION = 2  # part of the report's cache key: a report of an older layout is rebuilt, not reused
PIPELINE_KEYS = ("pipeline", "paths", "hydra", "dataset", "wss", "preset", "task_name")  # everything else goes to the stages


@dataclass
class Step:
    """One run of an entry point inside a stage folder."""

    entry: str  # train | predict | features
    overrides: list[str]
    subdir: str
    routed: list[str] = field(default_factory=list)  # applied only where the composed config has the key or group


@dataclass
class StageResult:
    status: str  # ran | cached | external | skipped
    run_id: str = ""
    dir: Path | None = None
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)


# -- what each stage runs ----------------------------------------------------------------------
def own_overrides(name: str, cfg: DictConfig) -> list[str]:
    """``pipeline.overrides.<name>``; a control takes those of the stage it copies first (everything equal)."""
    p = cfg.pipeline
    copied = CONTROL_OF.get(name)
    return [str(o) for o in [*((p.overrides.get(copied) or []) if copied else []), *(p.overrides.get(name) or [])]]


def stage_steps(name: str, cfg: DictConfig, common: list[str], done: dict[str, StageResult],
                seed: int | None = None) -> list[Step]:
    """The runs of stage ``name`` (paths relative to the stage folder are filled in by the caller).

    ``seed`` is the training seed of every training run (``pipeline.repeats``); prediction has none.
    """
    own = own_overrides(name, cfg)
    seeded = [f"seed={seed}"] if seed is not None else []
    final = f"model={cfg.pipeline.final_model}"
    if name == "seeds":
        return [Step("train", [*common, "model=cam", *own, *seeded], "train"),
                Step("predict", [*common, "model=cam", "ckpt={dir}/train/checkpoints/last.ckpt", "split=train",
                                 "out_dir={dir}/masks", "overwrite=true"], "predict", routed=own)]
    if name == "uss":
        backbone = [o for o in own if o.startswith("backbone")]
        pretrain = [str(o) for o in (cfg.pipeline.get("uss_pretrain") or [])]
        steps = []
        if pretrain:  # DINO on the training images first; CAUSE then reads its teacher ViT
            steps.append(Step("train", [*common, "model=dino", *backbone, *pretrain, *seeded], "pretrain"))
            backbone = [*backbone, "backbone.weights={dir}/pretrain/backbone.pth"]
        return [*steps, Step("train", [*common, "model=cause", *own, *backbone, *seeded], "train"),
                Step("features", [*[c for c in common if c.lstrip("+~").startswith(("dataset", "paths"))], *backbone,
                                  "ckpt={dir}/train/checkpoints/head/last.ckpt", "split=train", "out_dir={dir}/features",
                                  "overwrite=true"], "features")]
    seeds = done["seeds"].outputs.get("masks")
    if name in ("dhr", "control"):
        inputs = ["wss=folder", f"wss.path={seeds}"]
        if name == "dhr":
            uss = done["uss"].outputs
            inputs += [f"data.uss_dir={uss['features']}", f"model.dhr.uss_patch={uss['patch']}"]
        switch = list(CONTROL_SWITCHES) if name == "control" else []
        return [Step("train", [*common, "model=dhr", *inputs, *own, *seeded, *switch], "train"),
                Step("predict", [*common, "model=dhr", "ckpt={dir}/train/checkpoints/last.ckpt", "split=train",
                                 "out_dir={dir}/masks", "overwrite=true"], "predict", routed=own)]
    if name in ("final", "control_final"):
        masks = done[READS[name][0]].outputs["masks"]
        return [Step("train", [*common, final, "wss=folder", f"wss.path={masks}", *own, *seeded], "train")]
    if name == "baseline":
        return [Step("train", [*common, final, "wss=folder", f"wss.path={seeds}", *own, *seeded], "train")]
    if name == "ceiling":
        return [Step("train", [*common, final, *own, *seeded], "train")]
    raise ValueError(name)


def stage_outputs(name: str, stage_dir: Path, cfgs: dict[str, DictConfig]) -> dict[str, Any]:
    """Where a finished stage left what later stages and the report read."""
    if name in ("seeds", "dhr", "control"):
        infer = OmegaConf.to_container(cfgs["predict"].infer, resolve=True)
        return {"masks": str(stage_dir / "masks"), "scores": str(stage_dir / "masks_scores.json"),
                "ckpt": str(stage_dir / "train" / "checkpoints" / "last.ckpt"), "split": "train", "infer": infer}
    if name == "uss":
        manifest = json.loads((stage_dir / "features" / MANIFEST).read_text())
        return {"features": str(stage_dir / "features"), "patch": int(manifest["patch"])}
    train = cfgs["train"]
    from dhr.data.layout import DatasetInfo

    info = DatasetInfo.from_cfg(OmegaConf.to_container(train.dataset, resolve=True))
    split = info.split_dir_name(train.data.val_split)
    return {"ckpt": str(stage_dir / "train" / "checkpoints" / "last.ckpt"), "split": "val",
            "scores": str(stage_dir / "train" / "predictions" / f"{split}_scores.json"),
            "predictions": str(stage_dir / "train" / "predictions" / split),
            "infer": OmegaConf.to_container(train.infer, resolve=True), "model": str(train.tag)}


# -- composing, hashing, running ---------------------------------------------------------------
def route_extras(extras: list[str], cfg: DictConfig) -> list[str]:
    """The command-line overrides that apply to this composed stage config (its key or group exists)."""
    from dhr.conf_path import CONFIG_DIR

    kept = []
    for override in extras:
        key = override.split("=", 1)[0].lstrip("+~")
        is_group = "." not in key and (CONFIG_DIR / key).is_dir()
        if (is_group and key in cfg) or OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            kept.append(override)
    return kept


def compose_step(step: Step, stage_dir: Path, extras: list[str]) -> DictConfig:
    from dhr.engine import compose_run

    config = {"train": "train", "predict": "predict", "features": "features"}[step.entry]
    overrides = [o.replace("{dir}", str(stage_dir)) for o in step.overrides]
    base = compose_run(config, overrides, stage_dir / step.subdir)
    return compose_run(config, [*overrides, *route_extras([*step.routed, *extras], base)], stage_dir / step.subdir)


def config_key(name: str, steps: list[Step], extras: list[str], reads: dict[str, str]) -> str:
    """sha256 of the stage's composed configs (run folder as a placeholder) and the run ids it reads.

    Unresolved: every interpolation's source is a node of the same config, so a changed value
    changes the hash either way (and prediction configs hold model nodes that only resolve in training).
    """
    placeholder = Path("/STAGE_DIR") / name
    resolved = [OmegaConf.to_container(compose_step(s, placeholder, extras), resolve=False) for s in steps]
    if name == "control":
        resolved = [relabelling_inert(c) for c in resolved]
    text = json.dumps({"stage": name, "configs": resolved, "reads": reads}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def relabelling_inert(config: dict[str, Any]) -> dict[str, Any]:
    """A control config as its key sees it. Its training has relabelling off, reads no USS feature and
    prediction never relabels, so the relabelling switches (``model.dhr.*`` but ``enabled``) change nothing:
    a sweep of ``model.dhr.tau`` or of the USS features re-runs ``dhr``, never its control."""
    node = (config.get("model") or {}).get("dhr")
    if isinstance(node, dict):
        config["model"]["dhr"] = {"enabled": node.get("enabled")}
    return config


def run_step(step: Step, cfg: DictConfig) -> None:
    if step.entry == "train":
        strategy = str(cfg.trainer.get("strategy", "auto"))
        if strategy.startswith("ddp") and not strategy.startswith("ddp_spawn"):
            from dhr.errors import DHRError

            raise DHRError(f"trainer.strategy={strategy} starts every rank by re-running the command, which inside "
                           "dhr.pipeline would re-run the pipeline in each: use trainer.strategy=ddp_spawn "
                           "(e.g. trainer=ddp trainer.strategy=ddp_spawn, or trainer=ddp_cpu)")
        from dhr.train import run
    elif step.entry == "predict":
        from dhr.predict import run
    else:
        from dhr.features import run
    run(cfg)


def folder_fingerprint(folder: Path) -> str:
    """A cheap identity of an external folder of seeds or features: names, sizes and times."""
    if not folder.is_dir():
        from dhr.errors import DHRError

        raise DHRError(f"{folder}: folder not found (wss.path or pipeline.uss_dir)")
    entries = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in folder.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:12]


def external_stage(name: str, cfg: DictConfig) -> StageResult | None:
    """Seeds brought by ``wss=`` or USS features in ``pipeline.uss_dir``: no stage to run."""
    if name == "seeds" and cfg.get("wss"):
        folder = Path(cfg.wss.path)
        simulated = OmegaConf.select(cfg, "data.simulated_seeds")
        if simulated:  # wss=swallowed: written from the generated GT before the folder is fingerprinted
            from dhr.data.sources import ensure_simulated_seeds

            ensure_simulated_seeds(cfg.paths.data_root, OmegaConf.to_container(cfg.dataset, resolve=True), folder,
                                   **OmegaConf.to_container(simulated, resolve=True))
        return StageResult("external", folder_fingerprint(folder), outputs={"masks": str(folder), "split": "train",
                                                                              "source": f"wss={cfg.wss.method}"})
    on_disk = Path(cfg.paths.data_root) / cfg.dataset.name / str(cfg.dataset.splits.train) / "CAUSE"
    if name == "uss" and (cfg.pipeline.uss_dir or (on_disk / MANIFEST).is_file()):
        folder = Path(cfg.pipeline.uss_dir or on_disk)  # features dhr.features wrote into the tree are used as found
        manifest = folder / MANIFEST
        patch = cfg.pipeline.uss_patch or (json.loads(manifest.read_text()).get("patch") if manifest.is_file() else None)
        if patch is None:
            from dhr.errors import DHRError

            raise DHRError(f"pipeline.uss_dir={folder} has no manifest.json with the ViT patch: set pipeline.uss_patch")
        return StageResult("external", folder_fingerprint(folder), outputs={"features": str(folder), "patch": int(patch)})
    return None


def selected(cfg: DictConfig) -> list[str]:
    """The stages this run may execute: ``pipeline.only``, or ``pipeline.from`` .. ``pipeline.to``."""
    from dhr.errors import DHRError

    p = cfg.pipeline
    names = [str(s) for s in (p.only or [])] if p.only else None
    for value in [*(names or []), p["from"], p.to, *(p.force or [])]:
        if value is not None and value not in STAGES:
            raise DHRError(f"pipeline stage {value!r} unknown: the stages are {list(STAGES)}")
    if names is not None:
        return [s for s in STAGES if s in names]
    lo = STAGES.index(p["from"]) if p["from"] else 0
    hi = STAGES.index(p.to) if p.to else len(STAGES) - 1
    return list(STAGES[lo : hi + 1])


def check_weights_first(cfg: DictConfig, common: list[str], extras: list[str], allowed: set[str], run_dir: Path) -> None:
    """Resolve every ``backbone.pretrained=true`` of the stages to run before the first stage starts.

    An offline machine without the cached weights stops here, not hours later in a later stage.
    Stage inputs not made yet are placeholders: only the backbone nodes are read.
    """
    from dhr.engine import check_pretrained

    pending = str(run_dir / "pending")
    done = {"seeds": StageResult("ran", outputs={"masks": pending}),
            "uss": StageResult("ran", outputs={"features": pending, "patch": 14}),
            "dhr": StageResult("ran", outputs={"masks": pending}), "control": StageResult("ran", outputs={"masks": pending})}
    for name in STAGES[:-1]:
        if name not in allowed or external_stage(name, cfg) is not None or not wanted(name, cfg):
            continue
        for step in stage_steps(name, cfg, common, done):
            if step.entry != "predict":
                composed = compose_step(step, run_dir / "pending", extras)
                check_pretrained(composed.model.get("backbone") if step.entry == "train" else composed.get("backbone"))


def wanted(name: str, cfg: DictConfig) -> bool:
    """Stages a setting switches off: ``pipeline.ceiling`` (off by default), ``pipeline.control`` (on)."""
    if name == "ceiling":
        return bool(cfg.pipeline.ceiling)
    return bool(cfg.pipeline.control) if name in CONTROL_OF else True


def run_stage(name: str, cfg: DictConfig, run_dir: Path, common: list[str], extras: list[str],
              done: dict[str, StageResult], allowed: bool, seed: int | None = None, label: str = "") -> StageResult:
    """Run (or reuse) one stage of one training seed; ``allowed`` False only reuses a cached result."""
    label = label or name
    external = external_stage(name, cfg)
    if external is not None:
        log.info("stage %s: external (%s)", label, next(iter(external.outputs.values())))
        return external
    if not wanted(name, cfg):
        return StageResult("skipped")
    missing = [r for r in READS[name] if r != "ceiling" and done.get(r, StageResult("skipped")).status == "skipped"]
    if missing:
        if allowed:
            from dhr.errors import DHRError

            raise DHRError(f"stage {name} reads stage {missing[0]}, which has not run: run it first "
                           f"(drop pipeline.only / pipeline.from, or add {missing[0]})")
        return StageResult("skipped")
    steps = stage_steps(name, cfg, common, done, seed)
    reads = {r: done[r].run_id for r in READS[name] if r in done}
    key = config_key(name, steps, extras, reads)
    stage_dir = run_dir / f"{name}-{key}"
    manifest_path = stage_dir / MANIFEST
    if name in (cfg.pipeline.force or []) and allowed and manifest_path.is_file():
        stale = stage_dir.with_name(f"{stage_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        stage_dir.rename(stale)
        log.info("stage %s: forced; the earlier result moved to %s", label, stale)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        log.info("stage %s: cached (%s)", label, stage_dir)
        return StageResult("cached", manifest["run_id"], stage_dir, manifest["seconds"], manifest["outputs"])
    if not allowed:
        return StageResult("skipped")
    return execute(name, steps, stage_dir, extras, label)


def execute(name: str, steps: list[Step], stage_dir: Path, extras: list[str], label: str = "") -> StageResult:
    from dhr.utils.io import atomic_write_json

    label = label or name  # the log's name of the stage (with its seed under pipeline.repeats)
    log.info("stage %s: start (%s)", label, stage_dir)
    start = time.perf_counter()
    cfgs: dict[str, DictConfig] = {}
    for step in steps:
        marker = stage_dir / step.subdir / ".done"
        cfg = compose_step(step, stage_dir, extras)
        cfgs[step.entry] = cfg
        if marker.is_file():
            log.info("stage %s: %s already finished", label, step.subdir)
            continue
        if step.entry == "train" and (stage_dir / step.subdir / "checkpoints").is_dir():
            from omegaconf import open_dict

            with open_dict(cfg):
                cfg.ckpt_path = "last"  # a run that failed before: resume from its last checkpoint
        t0 = time.perf_counter()
        run_step(step, cfg)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("finished\n")
        log.info("stage %s: %s finished in %.1f s", label, step.subdir, time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    result = StageResult("ran", uuid.uuid4().hex, stage_dir, seconds, stage_outputs(name, stage_dir, cfgs))
    atomic_write_json(stage_dir / MANIFEST, {"stage": name, "run_id": result.run_id, "seconds": seconds,
                                            "outputs": result.outputs,
                                            "overrides": {s.subdir: [*s.overrides, *s.routed] for s in steps}, "extras": extras})
    log.info("stage %s: done in %.1f s", label, seconds)
    return result


def run_report(cfg: DictConfig, run_dir: Path, repeats: list[Repeat], allowed: bool) -> StageResult:
    """Rows and figures are rebuilt when a stage they read changed; the stage table always says this run."""
    from dhr.report import build_report, print_report, published_numbers, stage_table, write_report

    reads = {f"{r}@{rep.seed}": rep.done[r].run_id for rep in repeats for r in READS["report"]
             if r in rep.done and rep.done[r].run_id}
    expected = published_numbers(cfg)
    key = hashlib.sha256(json.dumps({"reads": reads, "examples": cfg.pipeline.examples, "expected": expected,
                                     "version": REPORT_VERSION},
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = run_dir / "report.json"
    start = time.perf_counter()
    if path.is_file() and json.loads(path.read_text()).get("key") == key:
        report, status = json.loads(path.read_text()), "cached"
    elif allowed:
        log.info("stage report: start")
        report, status = build_report(cfg, run_dir, [(rep.seed, rep.done) for rep in repeats], key), "ran"
    else:
        return StageResult("skipped")
    report["stages"] = stage_table([(rep.seed, rep.done) for rep in repeats])
    report["stages"]["report"] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
    write_report(report, run_dir)
    print_report(report, run_dir)
    return StageResult(status, key, run_dir, report["stages"]["report"]["seconds"])


@dataclass
class Repeat:
    """The stages of one training seed (``pipeline.repeats``)."""

    seed: int | None
    done: dict[str, StageResult] = field(default_factory=dict)


def training_seeds(cfg: DictConfig, common: list[str], extras: list[str], run_dir: Path) -> list[int]:
    """``seed`` (given on the command line, else the training config's) and the next ``pipeline.repeats - 1``."""
    from dhr.errors import DHRError

    repeats = cfg.pipeline.repeats
    if not isinstance(repeats, int) or repeats < 1:
        raise DHRError(f"pipeline.repeats={repeats}: give a whole number of training seeds, 1 or more (e.g. 3)")
    given = [o.split("=", 1)[1] for o in extras if o.split("=", 1)[0].lstrip("+") == "seed"]
    if given:
        try:
            base = int(given[-1])
        except ValueError:
            raise DHRError(f"seed={given[-1]}: the training seed must be a whole number") from None
    else:
        from dhr.engine import compose_run

        base = int(compose_run("train", common, run_dir / "pending").seed)
    return [base + r for r in range(repeats)]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the selected stages in order, once per training seed; returns ``report.json``'s content (or the stage table)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    report_dir = Path(hydra.runtime.output_dir)
    run_dir = Path(cfg.pipeline.cache_dir) if cfg.pipeline.cache_dir else report_dir  # where the stages live
    os.environ.setdefault("DHR_WANDB_GROUP", f"pipeline-{report_dir.name}")  # logger=wandb: one group per pipeline run
    forwarded = [o for o in hydra.overrides.task if o.lstrip("+~").startswith(("dataset.", "paths."))]
    common = [f"dataset={hydra.runtime.choices.dataset}", *forwarded, *[str(o) for o in cfg.pipeline.common or []]]
    extras = [str(o) for o in cfg.pipeline.extra or []]
    allowed = set(selected(cfg))
    seeds = training_seeds(cfg, common, extras, run_dir)
    extras = [o for o in extras if o.split("=", 1)[0].lstrip("+") != "seed"]  # each stage gets its repeat's seed
    check_weights_first(cfg, common, extras, allowed, run_dir)
    repeats = [Repeat(seed) for seed in seeds]
    start = time.perf_counter()
    for repeat in repeats:
        for name in STAGES[:-1]:
            label = name if len(seeds) == 1 else f"{name} (seed {repeat.seed})"
            repeat.done[name] = run_stage(name, cfg, run_dir, common, extras, repeat.done, name in allowed,
                                          repeat.seed, label)
    report = run_report(cfg, report_dir, repeats, "report" in allowed)
    for repeat in repeats:
        repeat.done["report"] = report
    log.info("pipeline: %s in %.1f s (%s)", ", ".join(f"{k} {v.status}" for k, v in repeats[0].done.items()),
             time.perf_counter() - start, run_dir)
    if report.status != "skipped":
        return json.loads((report_dir / "report.json").read_text())
    from dhr.report import stage_table

    return {"rows": {}, "stages": stage_table([(rep.seed, rep.done) for rep in repeats])}


_main = hydra_entry("pipeline", run)


def split_argv(argv: list[str]) -> list[str]:
    """Keep the pipeline's own overrides; hand the others to the stages as ``pipeline.extra``."""
    keep, extra = [], []
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~").split(".", 1)[0].split("/", 1)[0]
        (keep if arg.startswith("-") or "=" not in arg or key in PIPELINE_KEYS else extra).append(arg)
    if extra:
        keep.append("pipeline.extra=[" + ",".join(json.dumps(e) for e in extra) + "]")
    return keep


def main() -> None:
    """Console script ``dhr-pipeline``."""
    sys.argv = [sys.argv[0], *split_argv(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
