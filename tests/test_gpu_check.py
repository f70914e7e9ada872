"""bench/gpu_check.py --dry-run: every step of the GPU check, tiny, on the CPU, through the real script.

The GPU run happens once, on a machine lent for minutes; this is what makes it right the
first time. The figures are CPU noise: only their presence and consistency are checked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def run_check(*args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def resnet10_small_input_train_flops(size: int) -> int:
    """Forward + backward FLOPs of one image, counted by hand: 2 per multiply-add; backward is
    twice the forward (input and weight gradients) except at the stem, whose input needs none."""
    stem = 3 * 9 * 64 * size * size  # 3x3 conv 3 -> 64, stride 1, no max-pool
    macs = stem + 2 * 64 * 9 * 64 * size * size  # layer1: two 3x3 64 -> 64
    for width, side in ((128, size // 2), (256, size // 4), (512, size // 8)):  # layers 2-4: stride 2 first
        macs += (width // 2) * 9 * width * side**2 + width * 9 * width * side**2 + (width // 2) * width * side**2
    macs += 512 * 1000  # fc
    return 2 * (3 * macs - stem)


def test_dry_run_passes_every_step_and_writes_one_json(tmp_path):
    out, work = tmp_path / "gpu_check.json", tmp_path / "work"
    result = run_check("--dry-run", "--out", str(out), "--work", str(work), "--budget", "500")
    record = json.loads(out.read_text())
    failed = {name: step for name, step in record["steps"].items() if "error" in step}
    assert result.returncode == 0 and not failed, (result.stdout[-2000:], failed)
    steps = record["steps"]
    assert list(steps) == ["photos", "ceiling", "decode", "train_step", "stage1", "extract", "stage2"]
    assert record["dry_run"] is True and steps["ceiling"]["bf16_matmul_tflops"] > 0
    decode = steps["decode"]
    assert decode["images"] == 12 and decode["nvjpeg_decodable"] == 12 and decode["mean_abs_diff_vs_pil"] == 0
    assert decode["torchvision_train_preset"] > 0
    train = steps["train_step"]
    assert train["flops_per_image"] == resnet10_small_input_train_flops(32)
    assert train["deepspeed_vs_plain"] == pytest.approx(train["deepspeed_images_per_s"] / train["plain_images_per_s"])
    assert [epoch["epoch"] for epoch in steps["stage1"]["epochs"]] == [0, 1]
    assert steps["extract"]["splits"]["train"]["num_samples"] == 36  # 40 photos, 1 per class held out for val
    stage2 = steps["stage2"]
    assert stage2["extracted"]["rows"] == 36 and stage2["imagenet_lt_sized"]["rows"] == 2000
    figures = record["figures"]
    assert figures["model_flop_utilisation"] == pytest.approx(
        train["deepspeed_images_per_s"] * train["flops_per_image"] / (steps["ceiling"]["bf16_matmul_tflops"] * 1e12))
    assert figures["data_wait"] == max(epoch["data_wait"] for epoch in steps["stage1"]["epochs"])
    assert set(record["met"]) == set(record["targets"])
    assert work.is_dir() and (work / "run" / "best_model.pt").is_file()  # --work is kept


def refusal_recorded(path, stderr: str) -> bool:
    """A refused check still writes its JSON (a scarce device run brings back why), with no steps."""
    record = json.loads(path.read_text())
    return record["steps"] == {} and record["cannot_run"] in stderr


def test_without_cuda_the_real_run_is_refused_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_check("--out", str(tmp_path / "x.json"), timeout=120)
    assert result.returncode == 2 and refusal_recorded(tmp_path / "x.json", result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0]


def test_a_wheel_folder_without_wheels_is_refused_in_one_line(tmp_path):
    result = run_check("--dry-run", "--wheels", str(tmp_path), "--out", str(tmp_path / "x.json"), timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no .whl files" in lines[0] and "make gpu-wheels" in lines[0]


def test_without_deepspeed_the_check_is_refused_in_one_line(tmp_path):
    """sys.modules[name] = None is how Python spells "not importable" (find_spec gives None)."""
    code = ("import runpy, sys; sys.modules['deepspeed'] = None; "
            f"sys.argv = ['gpu_check.py', '--dry-run', '--out', {str(tmp_path / 'x.json')!r}]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and refusal_recorded(tmp_path / "x.json", result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DeepSpeed is not installed" in lines[0] and "make gpu-wheels" in lines[0]
