"""The GPU acceptance run (``make gpu-check``): one script, under 8 minutes on one CUDA GPU.

    python scripts/gpu_check.py [--out outputs/gpu-check] [--quick]

Steps, each a process of its own with a time limit, in this order:

1. ``crf``: the dense CRF's torch backend on the GPU, 16 crops of 512 px with 21 labels
   (``scripts/bench/crf.py``); target: under 0.3 s for the 16.
2. ``relabel``: the relabelling step on the GPU, without and with the torch CRF, against one
   forward + backward of the DHR network (DeepLabv3+ ResNet-101) on the same batch
   (``scripts/bench/relabel.py --network``); target: the step with the CRF costs no more than the
   network's forward + backward.
3. ``training``: the DeepLabv3+, CAM, DHR and Mask2Former training tests (fit, EMA, checkpoint,
   prediction, the online relabelling with its CRF) on the GPU under ``16-mixed``
   (``DHR_TEST_ACCELERATOR=gpu DHR_TEST_PRECISION=16-mixed``).
4. ``pipeline``: the tiny pipeline test, every stage on the GPU (seeds, CAUSE, DHR, final, baseline,
   report, the cache re-runs).

Writes ``summary.md`` and ``summary.json`` into ``--out`` and prints the markdown. Exit status: 0 when
every step passed and met its target, 1 when one did not, 2 when this machine has no CUDA GPU or lacks
a package (nothing runs then). dhr need not be installed: the steps run from this checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "torchvision", "pytorch_lightning", "torchmetrics", "timm", "transformers", "hydra", "omegaconf",
          "scipy", "PIL", "matplotlib", "pytest", "cv2")
CRF_TARGET_S = 0.3
TRAINING_TESTS = (
    "tests/test_train_predict.py::test_fit_writes_checkpoints_ema_and_evaluates_val",
    "tests/test_train_predict.py::test_predict_cli_writes_pngs_and_refuses_to_overwrite",
    "tests/test_train_predict.py::test_cam_baseline_trains_on_tags_and_writes_seeds_with_and_without_crf",
    "tests/test_dhr_module.py::test_dhr_trains_with_relabelling_and_writes_dhr_masks",
    "tests/test_mask2former_train.py::test_fit_evaluates_and_predict_reloads_with_crf_and_the_server_layout",
)
PIPELINE_TESTS = ("tests/test_pipeline.py::test_pipeline_runs_caches_and_reruns_only_what_a_change_touches",)


def refuse(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr)
    sys.exit(2)


def preflight() -> dict[str, str]:
    """Exit 2 unless a CUDA GPU and every package the steps import are here; the GPU's name and versions."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        refuse(f"missing Python packages {missing}: install dhr with `make setup`, or on a machine without the "
               "internet carry them as wheels (docs/benchmarks.md#gpu-check)")
    import torch

    if not torch.cuda.is_available():
        refuse("no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check. "
               "The CPU suite is `make test`.")
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": str(torch.version.cuda),
            "python": platform.python_version(), "host": platform.node()}


def environment() -> dict[str, str]:
    """The steps import dhr and dhr_reference from this checkout, whether or not they are installed."""
    paths = [str(REPO), str(REPO / "reference"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def run(name: str, argv: list[str], out: Path, timeout: float, env: dict[str, str]) -> dict:
    """Run one step; its output goes to ``<out>/<name>.log``."""
    print(f"gpu-check: {name}: {' '.join(argv)}", flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc, text = None, f"{err.stdout or ''}{err.stderr or ''}\n(killed after {timeout:.0f} s)"
    (out / f"{name}.log").write_text(text if isinstance(text, str) else text.decode(errors="replace"))
    seconds = round(time.monotonic() - start, 1)
    print(f"gpu-check: {name}: exit {rc} in {seconds} s", flush=True)
    return {"rc": rc, "seconds": seconds, "log": f"{name}.log"}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def junit(path: Path) -> dict:
    """Per-test outcomes of a pytest junit XML file."""
    if not path.is_file():
        return {}
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        tests[f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"] = {
            "outcome": outcome, "seconds": round(float(case.get("time", 0)), 1)}
    return tests


def pytest_step(name: str, tests: tuple[str, ...], out: Path, timeout: float, env: dict[str, str]) -> dict:
    xml = out / f"{name}.xml"
    step = run(name, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *tests],
               out, timeout, {**env, "DHR_TEST_ACCELERATOR": "gpu", "DHR_TEST_PRECISION": "16-mixed"})
    step["tests"] = junit(xml)
    step["ok"] = step["rc"] == 0 and len(step["tests"]) == len(tests) and all(
        t["outcome"] == "passed" for t in step["tests"].values())
    return step


def markdown(summary: dict) -> str:
    env, steps = summary["environment"], summary["steps"]
    lines = [f"# gpu-check: {'passed' if summary['ok'] else 'FAILED'}", "",
             f"{env['gpu']}, torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}; "
             f"{summary['seconds']} s in all; `{summary['command']}`", "",
             "| step | result | seconds | measured |", "|---|---|---|---|"]
    for name, step in steps.items():
        lines.append(f"| {name} | {'ok' if step['ok'] else 'FAILED'} (exit {step['rc']}) | {step['seconds']} | "
                     f"{step.get('measured', '')} |")
    for name in ("training", "pipeline"):
        for test, result in steps.get(name, {}).get("tests", {}).items():
            lines.append(f"| {name}: `{test.split('::')[-1]}` | {result['outcome']} | {result['seconds']} | |")
    lines += ["", "Logs: " + ", ".join(step["log"] for step in steps.values()) + f" in `{summary['out']}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu-check", help="where summary.{md,json} go")
    parser.add_argument("--quick", action="store_true", help="the benchmarks only (no tests)")
    args = parser.parse_args()
    started = time.monotonic()
    facts = preflight()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    steps: dict[str, dict] = {}

    crf = run("crf", [sys.executable, "scripts/bench/crf.py", "--device", "cuda", "--backend", "torch", "--per-image", "0",
                      "--crops", "16", "--size", "512", "--labels", "21", "--json", str(out / "crf.json")], out, 240, env)
    seconds = read_json(out / "crf.json").get("torch_seconds")
    crf.update(ok=crf["rc"] == 0 and seconds is not None and seconds < CRF_TARGET_S, target=f"< {CRF_TARGET_S} s",
               value=seconds, measured=f"16 crops of 512, 21 labels: {seconds} s (target < {CRF_TARGET_S} s)")
    steps["crf"] = crf

    relabel = run("relabel", [sys.executable, "scripts/bench/relabel.py", "--device", "cuda", "--network",
                              "--json", str(out / "relabel.json")], out, 300, env)
    numbers = read_json(out / "relabel.json")
    ratio = numbers.get("with_torch_crf_over_network")
    relabel.update(ok=relabel["rc"] == 0 and ratio is not None and ratio <= 1.0, target="relabel step <= network step",
                   value=numbers, measured=(f"relabel {numbers.get('batched_no_crf_s')} s without the CRF, "
                                            f"{numbers.get('with_torch_crf_s')} s with it; network forward + backward "
                                            f"{numbers.get('network_s')} s; ratio {ratio}"))
    steps["relabel"] = relabel

    if not args.quick:
        steps["training"] = pytest_step("training", TRAINING_TESTS, out, 240, env)
        steps["training"]["measured"] = "DeepLabv3+, CAM, DHR, Mask2Former under 16-mixed"
        steps["pipeline"] = pytest_step("pipeline", PIPELINE_TESTS, out, 240, env)
        steps["pipeline"]["measured"] = "every stage of the tiny pipeline on the GPU"

    summary = {"ok": all(s["ok"] for s in steps.values()), "environment": facts, "steps": steps, "out": str(out),
               "seconds": round(time.monotonic() - started, 1), "command": " ".join(["python", *sys.argv])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (out / "summary.md").write_text(text)
    print(text)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
