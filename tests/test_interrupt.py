"""Ctrl-C keeps the work: stage 1 checkpoints and exits 130 with one line; --config repeats a run."""
import json
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from launchers import (BIN, assert_same_weights, build_tiny_dataset, environment, final_weights, finish, free_port,
                       start_ranks, train_args)
from lt_dist.engine.ckpt_clock import CheckpointClock
from lt_dist.engine.preempt import EXIT_INTERRUPTED
from test_preempt import train_steps_logged, wait_for


def test_a_second_ctrl_c_exits_at_once_with_130():
    code = textwrap.dedent("""
        import time
        from lt_dist.engine.preempt import PreemptionWatch
        with PreemptionWatch(600) as watch:
            print("ready", flush=True)
            while not watch.requested:
                time.sleep(0.01)
            print("first", flush=True)
            time.sleep(600)  # a checkpoint that takes long: the second Ctrl-C must not wait for it
        """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().strip() == "first"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == EXIT_INTERRUPTED == 130
    assert err.strip() == "interrupted again: exiting now without waiting for the checkpoint"


def test_checkpoint_clock_is_due_after_its_minutes_on_check_steps_only():
    now = [0.0]
    clock = CheckpointClock(0.5, check_every=10, clock=lambda: now[0])
    assert not clock.due(10)
    now[0] = 29.9
    assert not clock.due(20)
    now[0] = 30.0
    assert not clock.due(21) and clock.due(30)  # due, but only said on a check step
    clock.restart()
    assert not clock.due(40)
    assert not CheckpointClock(0).due(10)  # 0 minutes: never
    with pytest.raises(ValueError):
        CheckpointClock(-1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("interrupt"))


def interrupt_then_resume_with_config_json(tiny, run, common) -> None:
    """Ctrl-C after 2 steps (one line, exit 130, a mid-epoch checkpoint), then config.json --resume to the end."""
    [rank] = start_ranks(train_args(tiny, run, *common), 1, free_port())
    wait_for(lambda: train_steps_logged(run) >= 2, [rank])
    rank.send_signal(signal.SIGINT)
    output, _ = rank.communicate(timeout=600)
    assert rank.returncode == 130, output[-4000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-4000:]
    assert "untested optimizer" not in output and "Setting accelerator" not in output  # quiet by default
    said = [line for line in output.splitlines() if "--resume" in line]
    assert len(said) == 1 and said[0].startswith("train_repr: interrupted at step "), output[-4000:]
    tag = (run / "checkpoints" / "latest").read_text().strip()
    assert tag.endswith("-mid") and f"checkpoint {tag} keeps the work" in said[0]
    # the run's own config.json, fed back with --resume, carries on to the end
    config = run / "config.json"
    assert json.loads(config.read_text())["train"]["seed"] == common[-1]
    resumed = finish(start_ranks([str(REPO / "launch" / "train_repr.py"), "--config", str(config), "--resume"], 1,
                                 free_port()))
    assert "resumed from" in resumed[0]


def test_ctrl_c_checkpoints_says_how_to_resume_and_a_finished_resume_exits_0(tiny, tmp_path):
    run = tmp_path / "interrupted"
    interrupt_then_resume_with_config_json(tiny, run, ["--epochs", 1, "--seed", 5])
    # the test scores are in log.jsonl (and TensorBoard) as well as test_metrics.json
    [logged] = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"kind": "test"' in line]
    written = json.loads((run / "test_metrics.json").read_text())
    assert logged["split"] == "test" and logged["few"] == written["few"] and logged["all"] == written["all"]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # --resume of a finished run says so, exits 0 and does not test again
    before = (run / "test_metrics.json").stat().st_mtime_ns
    again = finish(start_ranks([str(REPO / "launch" / "train_repr.py"), "--config", str(run / "config.json"),
                                "--resume"], 1, free_port()))
    assert "already finished its 1 epochs" in again[0]
    assert (run / "test_metrics.json").stat().st_mtime_ns == before


@pytest.mark.timeout(900)
def test_ctrl_c_under_lt_dist_launch_checkpoints_on_both_ranks_and_exits_130_without_a_traceback(tiny, tmp_path):
    """`lt_dist launch` runs DeepSpeed's runner in its own session: the terminal's SIGINT reaches
    the wrapper only, which hands it to the two ranks; DeepSpeed's launcher then exits 130 quietly."""
    run = tmp_path / "launched"
    args = train_args(tiny, run, "--epochs", 1, "--seed", 7)
    wrapper = subprocess.Popen([str(BIN / "lt_dist"), "launch", "--num_gpus", "2", "--master_port", str(free_port()),
                                *args], cwd=REPO,
                               env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: train_steps_logged(run) >= 2, [wrapper])
    wrapper.send_signal(signal.SIGINT)
    output, _ = wrapper.communicate(timeout=600)
    assert wrapper.returncode == EXIT_INTERRUPTED, output[-4000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-4000:]
    assert "CUDA_VISIBLE_DEVICES" not in output and "Setting accelerator" not in output, output[-4000:]
    said = [line for line in output.splitlines() if "--resume" in line]
    assert len(said) == 1 and "train_repr: interrupted at step " in said[0], output[-4000:]
    tag = (run / "checkpoints" / "latest").read_text().strip()
    parts = sorted(p.name for p in (run / "checkpoints" / tag).glob("zero_pp_rank_*"))
    assert tag.endswith("-mid") and len(parts) == 2, parts  # both ranks saved at the one agreed step


@pytest.mark.slow
def test_interrupted_and_resumed_from_config_json_equals_the_straight_run(tiny, tmp_path):
    common = ["--epochs", 2, "--seed", 6]
    finish(start_ranks(train_args(tiny, tmp_path / "straight", *common), 1, free_port()))
    interrupt_then_resume_with_config_json(tiny, tmp_path / "interrupted", common)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "interrupted"))
