"""The GPU check in one prepared script: decode, training step, stage 1, extract and stage 2 on one GPU.

Written for a GPU machine lent for minutes (one H200: Python 3.12, torch 2.11, no
DALI, DeepSpeed or Ray, no network): it installs what `make gpu-wheels` prepared,
runs every step of bench/gpu_steps.py in its own process within a time budget, and
writes one JSON (after each step, so a cut-off run keeps what it measured):

    python3 bench/gpu_check.py --wheels gpu-wheels --out $OUT/gpu_check.json   # on the GPU
    python bench/gpu_check.py --dry-run --out /tmp/gpu_check_dry.json          # here, on the CPU

--dry-run runs the same steps with tiny sizes on the CPU (the test suite does), so the
script is known to work before a GPU is ever lent. Exit status: 0 all steps passed,
1 some step failed (its error is in the JSON), 2 the machine cannot run the check
(one line says why: no CUDA without --dry-run, DeepSpeed or the photos missing).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)

# (step, seconds it may take on the GPU at most); a step runs only if the ones it needs passed
STEPS = [("photos", 90), ("ceiling", 60), ("decode", 90), ("train_step", 150), ("stage1", 180),
         ("extract", 90), ("stage2", 120)]
NEEDS = {"decode": "photos", "stage1": "photos", "extract": "stage1", "stage2": "extract"}

# ImageNet-like sizes for the GPU; the dry run's are the smallest that exercise every branch.
GPU_SETTINGS = {"device": "cuda", "photos": 2000, "classes": 20, "matmul_n": 8192, "matmul_reps": 20,
                "decode_images": None, "decode_batch": 256, "decode_passes": 3, "arch": "resnext152_32x4d", "size": 224,
                "small_input": False, "batch": 128, "steps": 10, "blocks": 2, "stage1_arch": "resnet50",
                "stage1_batch": 128, "val_per_class": 10, "pack_workers": 8, "loader_workers": 6, "epochs": 2,
                "train_preset": "imagenet_train", "eval_preset": "imagenet_eval", "image_size": None,
                "crt_epochs": 10, "stage2_rows": 115846, "stage2_dim": 2048, "stage2_classes": 1000}
DRY_SETTINGS = {**GPU_SETTINGS, "device": "cpu", "photos": 40, "classes": 4, "matmul_n": 64, "matmul_reps": 2,
                "decode_images": 12, "decode_batch": 8, "decode_passes": 1, "arch": "resnet10", "size": 32,
                "small_input": True,
                "batch": 4, "steps": 1, "blocks": 1, "stage1_arch": "resnet10", "stage1_batch": 8,
                "val_per_class": 1, "pack_workers": 1, "loader_workers": 1, "train_preset": "small_train",
                "eval_preset": "small_eval", "image_size": 16, "crt_epochs": 1, "stage2_rows": 2000,
                "stage2_dim": 32, "stage2_classes": 20}

# The targets for the GPU run.
TARGETS = {"decode_images_per_s": 5000, "model_flop_utilisation": 0.35, "deepspeed_vs_plain": 0.95,
           "data_wait": 0.05}


class CannotRun(Exception):
    """The machine cannot run the check: one line for the user, exit 2."""


def install_wheels(folder: str, target: str) -> None:
    """pip install --no-index --no-deps every wheel in `folder` into `target` (a path for PYTHONPATH).

    Where this Python has no pip, the wheels are unpacked instead: a wheel is a zip of
    its import tree, which is all these (no scripts, no compiled entry points) need.
    """
    import importlib.util
    import zipfile

    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        raise CannotRun(f"--wheels {folder!r} holds no .whl files: run `make gpu-wheels` on a networked machine")
    if importlib.util.find_spec("pip") is None:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
        return
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                             "--target", target, *wheels], capture_output=True, text=True)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CannotRun(f"pip could not install the wheels in {folder!r}: {last}")


def check_machine(args, site: str | None) -> None:
    """CUDA (unless a dry run), DeepSpeed and the photos' source, before any step starts."""
    import importlib.util

    if site:
        sys.path.insert(0, site)
    if importlib.util.find_spec("deepspeed") is None:
        raise CannotRun("DeepSpeed is not installed: run `make gpu-wheels` and pass --wheels gpu-wheels "
                        "(or pip install deepspeed)")
    # present is not importable: a dependency missing from the wheels would fail every later step
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, site or "") if p)}
    probe = subprocess.run([sys.executable, "-c", "import deepspeed, tqdm, pyarrow, lt_dist.shards.pack"],
                           env=env, cwd=REPO, capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        raise CannotRun(f"cannot import what the steps need: {last}")
    if args.photos is None and importlib.util.find_spec("sklearn") is None:
        raise CannotRun("no photos: scikit-learn is not installed; pass --photos gpu-wheels/photos "
                        "(`make gpu-wheels` copies them there)")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise CannotRun("torch.cuda.is_available() is False: this check needs a CUDA GPU "
                            "(--dry-run runs it tiny on the CPU)")


def run_step(step: str, settings: dict, work: str, env: dict, timeout: float) -> dict:
    """Run one step in a fresh process; its result, or {"error": ...} on failure or timeout."""
    settings_path = os.path.join(work, f"{step}.settings.json")
    result_path = os.path.join(work, f"{step}.result.json")
    with open(settings_path, "w", encoding="utf-8") as handle:
        json.dump(settings, handle)
    log_path = os.path.join(work, f"{step}.log")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            status = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_steps.py"), step, settings_path,
                                     result_path], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                    timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            status = None
    if status == 0:
        with open(result_path, encoding="utf-8") as handle:
            return json.load(handle)
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        tail = handle.read()[-3000:]
    reason = f"timed out after {timeout:.0f} s" if status is None else f"exit status {status}"
    return {"error": reason, "log_tail": tail, "seconds": round(time.perf_counter() - started, 2)}


def summarise(steps: dict) -> dict:
    """The figures the targets are about, and whether each is met (None: not measured)."""
    decode, train, stage1 = steps.get("decode", {}), steps.get("train_step", {}), steps.get("stage1", {})
    ceiling = steps.get("ceiling", {}).get("bf16_matmul_tflops")
    rates = [decode.get(key) for key in ("torchvision_train_preset", "dali_mixed_train_preset")]
    figures = {"decode_images_per_s": max((rate for rate in rates if rate), default=None),
               "model_flop_utilisation": None, "deepspeed_vs_plain": train.get("deepspeed_vs_plain"),
               "data_wait": None}
    if ceiling and train.get("deepspeed_images_per_s"):
        achieved = train["deepspeed_images_per_s"] * train["flops_per_image"]
        figures["model_flop_utilisation"] = achieved / (ceiling * 1e12)
    if stage1.get("epochs"):
        figures["data_wait"] = max(epoch["data_wait"] for epoch in stage1["epochs"])
    met = {}
    for key, target in TARGETS.items():
        value = figures[key]
        met[key] = None if value is None else (value < target if key == "data_wait" else value >= target)
    return {"figures": figures, "targets": TARGETS, "met": met}


def write(path: str, record: dict) -> None:
    """The JSON, replaced whole (temp + rename): a reader never sees half of it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
        handle.write("\n")
    os.replace(temp, path)


def run_checks(args, settings: dict, work: str, env: dict) -> dict:
    """Every step in order within the budget; the record written after each."""
    record = {"benchmark": "gpu_check", "dry_run": args.dry_run,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "host": {"python": platform.python_version(), "platform": platform.platform(),
                       "nproc": os.cpu_count()},
              "settings": settings, "steps": {}}
    deadline = time.monotonic() + args.budget
    for step, cap in STEPS:
        needed = NEEDS.get(step)
        remaining = deadline - time.monotonic()
        if needed and "error" in record["steps"].get(needed, {"error": ""}):
            result = {"error": f"skipped: needs step {needed!r}, which did not pass"}
        elif remaining < 5:
            result = {"error": "skipped: the time budget is spent"}
        else:
            limit = remaining if args.dry_run else min(cap, remaining)
            result = run_step(step, settings, work, env, limit)
        record["steps"][step] = result
        if step == "photos" and "folder" in result:
            settings = {**settings, "photo_folder": result["folder"]}
        state = "FAILED " + result["error"] if "error" in result else f"ok in {result['seconds']:.1f} s"
        print(f"{step}: {state}", flush=True)
        record.update(summarise(record["steps"]))
        write(args.out, record)
    return record


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same steps, tiny, on the CPU")
    parser.add_argument("--out", help="result JSON (default: bench/results/gpu_check[_dry].json)")
    parser.add_argument("--wheels", help="folder of wheels to install first (`make gpu-wheels` makes gpu-wheels/)")
    parser.add_argument("--photos", help="folder with china.jpg and flower.jpg (default: from scikit-learn, "
                        "else WHEELS/photos)")
    parser.add_argument("--work", help="folder for photos, shards, runs and features (default: a temp folder, "
                        "removed at the end)")
    parser.add_argument("--budget", type=float, default=400.0, help="seconds for all steps (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    args.out = args.out or os.path.join(BENCH, "results", "gpu_check_dry.json" if args.dry_run else "gpu_check.json")
    if args.budget <= 0:
        print(f"gpu_check: error: --budget must be > 0 seconds, got {args.budget}", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="gpu_check-")
    os.makedirs(work, exist_ok=True)
    try:
        site = None
        if args.wheels:
            site = os.path.join(work, "site")
            install_wheels(args.wheels, site)
            if args.photos is None and os.path.isdir(os.path.join(args.wheels, "photos")):
                args.photos = os.path.join(args.wheels, "photos")
        check_machine(args, site)
    except CannotRun as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        write(args.out, {"benchmark": "gpu_check", "dry_run": args.dry_run, "cannot_run": str(error), "steps": {}})
        return 2
    paths = [REPO] + ([site] if site else []) + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
    # DeepSpeed caches its JIT-built ops there (the Makefile exports the same folder)
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))
    settings = {**(DRY_SETTINGS if args.dry_run else GPU_SETTINGS), "work": work,
                "photo_source": os.path.abspath(args.photos) if args.photos else None}
    try:
        record = run_checks(args, settings, work, env)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(record["figures"], indent=1))
    print(f"wrote {args.out}")
    return 1 if any("error" in result for result in record["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
