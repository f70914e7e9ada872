"""Stage 1 through the real launchers on the CPU: 2 processes, gloo, tiny shards."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, free_port, make_image_folder, sigkill_when

LAUNCHER = Path(sys.executable).parent / "deepspeed"
SCRIPT = REPO / "launch" / "train_repr.py"
DS_CONFIG = {"train_batch_size": 16, "optimizer": {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9,
             "weight_decay": 5e-4}}, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1},
             "zero_allow_untested_optimizer": True, "steps_per_print": 1000000}
TINY = ["--arch", "resnet10", "--small-input", "--train-preset", "small_train", "--eval-preset", "small_eval",
        "--image-size", "16", "--decoder", "torchvision", "--eval-batch-size", "16", "--log-every", "2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """train (60/30/12/6), val (2 per class) and test (3 per class) of 20x20 JPEGs."""
    root = tmp_path_factory.mktemp("stage1")
    from lt_dist.cli import main

    train = make_image_folder(root / "train_images", [62, 32, 14, 8], size=(20, 20))
    test = make_image_folder(root / "test_images", [3, 3, 3, 3], seed=5, size=(20, 20))
    assert main(["pack", str(train), "--out", str(root / "ds"), "--val-per-class", "2", "--no-progress"]) == 0
    assert main(["pack", str(test), "--out", str(root / "ds"), "--split", "test", "--no-progress"]) == 0
    ds_json = root / "ds.json"
    ds_json.write_text(json.dumps(DS_CONFIG))
    return root


def environment() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return env


def launch(shards, out, *extra, procs=2, port=None, **popen):
    command = [str(LAUNCHER), "--num_gpus", str(procs), "--master_port", str(port or free_port()),
               str(SCRIPT), "--ds_config", str(shards / "ds.json"), "--data", str(shards / "ds"),
               "--out", str(out), *TINY, *map(str, extra)]
    return subprocess.Popen(command, cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def final_weights(run: Path) -> dict:
    tags = sorted(p for p in (run / "checkpoints").iterdir() if p.name.startswith("gs"))
    return torch.load(tags[-1] / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


def own_shm_segments(port: int) -> list[Path]:
    """DeepSpeed's CPU all-reduce segments of the run on `port` only (named ..._UID_ADDR_PORT_RANK)."""
    return list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def epoch_lines(run: Path) -> list[dict]:
    """The epoch records of log.jsonl without what depends on the clock."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    clock = {"time", "seconds", "images_per_s", "data_wait"}
    return [{k: v for k, v in r.items() if k not in clock} for r in records if r["kind"] == "epoch"]


def test_deepspeed_two_cpu_processes_train_and_write_everything(shards, tmp_path):
    run = tmp_path / "run"
    process = launch(shards, run, "--epochs", 2, "--workers", 1)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert "bf16 is switched off" in output
    # the node's cores split between the 2 ranks, logged once; the tests' OMP_NUM_THREADS=1 wins for torch
    cores = len(os.sched_getaffinity(0))
    assert f"cpus: 1 torch thread(s), 0 DALI thread(s), 1 loader worker(s) per rank ({cores} cores shared by " \
           f"2 rank(s) on this node, {max(1, cores // 2)} each" in output, output[-3000:]
    assert "torch threads from OMP_NUM_THREADS" in output and output.count("cpus: ") == 1
    tags = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("gs"))
    assert tags[-1].endswith("epoch0001-end") and (run / "checkpoints" / "latest").read_text() == tags[-1]
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["deepspeed"]["train_micro_batch_size_per_gpu"] == 8
    val_rows = (run / "val_per_class.csv").read_text().splitlines()
    assert val_rows[0].startswith("epoch,label,class_name,group") and len(val_rows) == 1 + 2 * 4
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert set(metrics) >= {"all", "many", "medium", "few", "best_epoch"} and 0 <= metrics["all"] <= 100
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and {"loss", "images_per_s", "data_wait", "val_all", "val_few"} <= set(epochs[0])
    assert any(r["kind"] == "train" and "lr" in r for r in records)
    assert list((run / "tb").iterdir())
    best = torch.load(run / "best_model.pt", weights_only=False)
    assert best["arch"] == "resnet10" and best["num_classes"] == 4


def test_sigkill_mid_epoch_and_resume_gives_the_same_weights(shards, tmp_path):
    common = ["--epochs", 3, "--workers", 0, "--ckpt-every", 3, "--seed", 7]
    straight = launch(shards, tmp_path / "straight", *common)
    output, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, output[-3000:]

    run = tmp_path / "killed"
    victim = launch(shards, run, *common, start_new_session=True)
    latest = run / "checkpoints" / "latest"
    sigkill_when(victim, lambda: latest.exists() and "epoch0001-mid" in latest.read_text(), 0.005,
                 "the run ended before it could be killed", group=True)
    assert not (run / "test_metrics.json").exists()

    port = free_port()
    resumed = launch(shards, run, *common, "--resume", port=port)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert "resumed from" in output
    assert not own_shm_segments(port), "shared-memory segments left behind"
    straight_run = tmp_path / "straight"
    expected, actual = final_weights(straight_run), final_weights(run)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # everything else the run writes: the best-on-val model (a resume that forgot its best
    # so far could overwrite it), the test scores of that model, the per-class rows
    best_straight, best_resumed = (torch.load(r / "best_model.pt", weights_only=False) for r in (straight_run, run))
    assert best_straight["epoch"] == best_resumed["epoch"]
    np.testing.assert_equal(best_resumed["val"], best_straight["val"])  # NaN (an empty group) equals NaN here
    for name, tensor in best_straight["state_dict"].items():
        assert torch.equal(tensor, best_resumed["state_dict"][name]), name
    for name in ("test_metrics.json", "val_per_class.csv"):
        assert (run / name).read_text() == (straight_run / name).read_text(), name
    resumed_at = int(re.search(r"resumed from .* at epoch (\d+)", output).group(1))
    straight_epochs, resumed_epochs = epoch_lines(straight_run), epoch_lines(run)
    assert [e["epoch"] for e in resumed_epochs] == [0, 1, 2]
    for before, after in zip(straight_epochs, resumed_epochs, strict=True):
        if after["epoch"] == resumed_at:  # the killed epoch: its mean loss covers the batches after the resume only
            before, after = ({k: v for k, v in e.items() if k != "loss"} for e in (before, after))
        np.testing.assert_equal(after, before)


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_newest_checkpoint(shards, tmp_path):
    """Truncate the newest checkpoint's model file: --resume logs the fallback and continues from the older tag."""
    run = tmp_path / "run"
    first = launch(shards, run, "--epochs", 2, "--workers", 0, procs=1)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    tags = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("gs"))
    assert len(tags) == 2 and all((run / "checkpoints" / tag / "lt_manifest.json").is_file() for tag in tags)
    model_file = run / "checkpoints" / tags[1] / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    # as if killed after its last checkpoint, before the test evaluation: a finished run is not resumed
    (run / "test_metrics.json").unlink()
    refused = launch(shards, run, "--epochs", 3, "--workers", 0, "--resume", procs=1)
    output, _ = refused.communicate(timeout=600)  # the saved sampling plan is for 2 epochs
    assert refused.returncode != 0 and "trained with epochs=2, this run has epochs=3" in output, output[-3000:]
    resumed = launch(shards, run, "--epochs", 2, "--workers", 0, "--resume", procs=1)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert f"{tags[1]} is unusable: mp_rank_00_model_states.pt has 1000 bytes" in output
    assert f"resumed from {run / 'checkpoints'}/{tags[0]} at epoch 1" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("launcher", ["torchrun", "python"])
def test_starts_under_torchrun_and_as_a_plain_process(shards, tmp_path, launcher):
    run = tmp_path / "run"
    script = [str(SCRIPT), "--ds_config", str(shards / "ds.json"), "--data", str(shards / "ds"), "--out", str(run),
              *TINY, "--epochs", "1", "--workers", "0"]
    if launcher == "torchrun":
        command = [str(LAUNCHER.parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                   *script]
    else:
        command = [sys.executable, *script]
    env = environment()
    if launcher == "python":  # no OMP_NUM_THREADS: the planned torch threads, a whole node for one rank
        del env["OMP_NUM_THREADS"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if launcher == "python":
        cores = len(os.sched_getaffinity(0))
        assert f"cpus: {cores} torch thread(s), 0 DALI thread(s), 0 loader worker(s) per rank ({cores} cores " \
               f"shared by 1 rank(s) on this node, {cores} each;" in result.stdout, result.stdout[-2000:]
    assert json.loads((run / "config.json").read_text())["world_size"] == (2 if launcher == "torchrun" else 1)
    assert (run / "test_metrics.json").exists()
    state = torch.load(next((run / "checkpoints").glob("gs*/mp_rank_00_model_states.pt")), weights_only=False)
    assert state["epoch"] == 0 and state["loader"]["epoch"] == 1 and "ds_config" in state


def run_main(args, capsys):
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import train_repr
    finally:
        sys.path.pop(0)
    status = train_repr.main([str(a) for a in args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"--ds_config": "missing.json"}, "DeepSpeed config 'missing.json' does not exist"),
    ({"--arch": "resnet7"}, "unknown arch 'resnet7'"),
    ({"--loss": "hinge"}, "unknown loss 'hinge'"),
    ({"--sampler": "balanced"}, "unknown sampler 'balanced'"),
    ({"--data": "/nonexistent/ds"}, "manifest.parquet is missing"),
])
def test_bad_input_stops_at_start_up(shards, tmp_path, capsys, change, message):
    args = {"--ds_config": shards / "ds.json", "--data": shards / "ds", "--out": tmp_path / "r", **change}
    status, err = run_main([*TINY, "--epochs", 1, *sum(([k, v] for k, v in args.items()), [])], capsys)
    assert status == 2 and message in err


def test_ds_json_problems_name_both_values(shards, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    status, err = run_main(["--ds_config", bad, "--data", shards / "ds", "--out", tmp_path / "r"], capsys)
    assert status == 2 and "not valid JSON" in err
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({**DS_CONFIG, "train_batch_size": 15}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    status, err = run_main(["--ds_config", odd, "--data", shards / "ds", "--out", tmp_path / "r"], capsys)
    assert status == 2 and "train_batch_size 15 does not divide" in err and "world size 2" in err
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({**DS_CONFIG, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3}))
    status, err = run_main(["--ds_config", clash, "--data", shards / "ds", "--out", tmp_path / "r"], capsys)
    assert status == 2 and "train_batch_size 16" in err and "= 24" in err


def test_resume_with_another_arch_or_class_count_is_refused(shards, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"arch": "resnet18", "small_input": True},
                                                 "num_classes": 4}))
    args = ["--ds_config", shards / "ds.json", "--data", shards / "ds", "--out", run, "--resume", *TINY]
    status, err = run_main(args, capsys)
    assert status == 2 and "arch='resnet18'" in err and "arch='resnet10'" in err
    (run / "config.json").write_text(json.dumps({"train": {"arch": "resnet10", "small_input": True},
                                                 "num_classes": 7}))
    status, err = run_main(args, capsys)
    assert status == 2 and "num_classes=7" in err


def first_step_loss(shards, out, *loss_flags) -> float:
    """The loss of the first optimizer step of a 1-epoch, 1-process run (seed 3)."""
    command = [sys.executable, str(SCRIPT), "--ds_config", str(shards / "ds.json"), "--data", str(shards / "ds"),
               "--out", str(out), *TINY[:-2], "--log-every", "1", "--epochs", "1", "--workers", "0", "--seed", "3",
               *map(str, loss_flags)]
    result = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["kind"] == "train")
    assert first["step"] == 1
    return first["loss"]


def test_stage1_trains_the_configured_loss(shards, tmp_path):
    """Same seed, so the same first batch and initial weights: focal with gamma = 2 scales every
    sample's cross-entropy by (1 - p_y)^2, near (3/4)^2 for an untrained 4-class net, so its first
    loss lies well below the CE run's. A stage 1 that trained CE whatever --loss said gives equal losses."""
    ce = first_step_loss(shards, tmp_path / "ce", "--loss", "ce")
    focal = first_step_loss(shards, tmp_path / "focal", "--loss", "focal", "--loss-param", "gamma=2")
    assert 0 < focal < 0.9 * ce, (ce, focal)


def test_stage1_mixup_mixes_the_batches_and_is_recorded(shards, tmp_path):
    """Same seed, so the same first batch and initial weights: with --mixup 1.0 the first step sees mixed
    images against two labels each, so its loss differs from the plain run's; config.json records alpha."""
    plain = first_step_loss(shards, tmp_path / "plain")
    mixed = first_step_loss(shards, tmp_path / "mixed", "--mixup", "1.0")
    assert mixed != pytest.approx(plain, rel=1e-3), (plain, mixed)
    assert json.loads((tmp_path / "mixed" / "config.json").read_text())["train"]["mixup"] == 1.0
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["train"]["mixup"] == 0.0
