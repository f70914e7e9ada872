"""Pre-emption: SIGTERM/SIGINT -> a checkpoint at one agreed step on every rank -> exit 0 -> exact resume."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from launchers import (assert_same_weights, build_tiny_dataset, deepspeed_one_node, environment, final_weights,
                       finish, free_port, start_ranks, train_args)
from lt_dist.engine.preempt import EXIT_GRACE_EXCEEDED, PreemptionWatch


def test_a_signal_is_recorded_and_the_old_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatch(60) as watch:
        assert not watch.requested and not watch.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        assert watch.requested and watch.agreed() and watch.received_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(ValueError, match="grace_seconds must be > 0"):
        PreemptionWatch(0)


def test_a_process_that_cannot_checkpoint_in_time_exits_143_with_a_message():
    # A rank stuck after the signal (here: sleeping instead of reaching a step) must not outlive the grace.
    code = textwrap.dedent("""
        import time
        from lt_dist.engine.preempt import PreemptionWatch
        with PreemptionWatch(0.5):
            print("ready", flush=True)
            time.sleep(600)
        """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == EXIT_GRACE_EXCEEDED == 143
    assert "no checkpoint within --grace-seconds 0.5" in err


def test_bad_grace_seconds_is_refused_at_start_up(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import train_repr
    finally:
        sys.path.pop(0)
    status = train_repr.main(train_args(tmp_path, tmp_path / "run", "--grace-seconds", "-1")[1:])
    assert status == 2 and "grace_seconds must be in (0, 86400], got -1.0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("preempt"))


def train_steps_logged(run) -> int:
    """Optimizer steps rank 0 has logged so far (log.jsonl, one "train" line per step here)."""
    log = run / "log.jsonl"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.endswith("}") and '"kind": "train"' in line)


def wait_for(condition, processes, timeout_s: float = 600) -> None:
    """Poll condition() while every process runs; fail when one ends first."""
    import time

    deadline = time.time() + timeout_s
    while not condition():
        assert all(p.poll() is None for p in processes), "a rank ended before the signal could be sent"
        assert time.time() < deadline, "timed out waiting for training to start"
        time.sleep(0.01)


@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
def test_sigterm_to_one_rank_stops_both_at_one_step_and_resume_is_bit_identical(tiny, tmp_path):
    common = ["--epochs", 2, "--seed", 3]
    finish(start_ranks(train_args(tiny, tmp_path / "straight", *common), 2, free_port()))

    run = tmp_path / "preempted"
    ranks = start_ranks(train_args(tiny, run, *common), 2, free_port())
    wait_for(lambda: train_steps_logged(run) >= 2, ranks)
    ranks[1].send_signal(signal.SIGTERM)  # only rank 1: rank 0 learns it through the all-reduce
    outputs = finish(ranks, timeout=600)
    stops = [line for output in outputs for line in output.splitlines() if line.startswith("train_repr: pre-empted")]
    assert len(stops) == 2 and stops[0] == stops[1], outputs  # both ranks, the same step and tag
    tag = (run / "checkpoints" / "latest").read_text().strip()
    assert tag in stops[0] and tag.endswith("-mid") and not (run / "test_metrics.json").exists()
    step = int(tag[2:11])
    assert f"step {step};" in stops[0]
    # every rank wrote its part of the optimizer state under the one tag
    assert {p.name for p in (run / "checkpoints" / tag).glob("*optim_states.pt")} == {
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)}

    resumed = finish(start_ranks(train_args(tiny, run, *common, "--resume"), 2, free_port()))
    assert "resumed from" in resumed[0]
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(run))


@pytest.mark.timeout(900)
def test_sigterm_to_every_process_with_loader_workers_still_checkpoints(tiny, tmp_path):
    # Slurm's time limit signals every process, the ranks' DataLoader workers too. A worker
    # that died of it made torch's SIGCHLD handler raise in its rank: exit 1, no checkpoint.
    run = tmp_path / "preempted"
    ranks = start_ranks(train_args(tiny, run, "--epochs", 2, "--seed", 5, "--workers", 1), 2, free_port(),
                        start_new_session=True)

    def session_size(pid: int) -> int:  # a rank and its loader worker share the rank's session
        return len(subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True).stdout.split())

    wait_for(lambda: train_steps_logged(run) >= 2 and all(session_size(r.pid) >= 2 for r in ranks), ranks)
    for rank in ranks:
        os.killpg(rank.pid, signal.SIGTERM)
    outputs = finish(ranks, timeout=600)
    assert all(output.count("train_repr: pre-empted at step") == 1 for output in outputs), outputs
    assert not any("Traceback" in output for output in outputs), outputs
    assert (run / "checkpoints" / "latest").read_text().strip().endswith("-mid")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
def test_sigterm_to_the_whole_deepspeed_job_checkpoints_and_resumes_exactly(tiny, tmp_path):
    # What Slurm does at a time limit: SIGTERM to every process of the job (launchers and ranks).
    common = ["--epochs", 2, "--seed", 4]
    finish([deepspeed_one_node(train_args(tiny, tmp_path / "straight", *common), 2, free_port())])
    run = tmp_path / "preempted"
    # with a loader worker per rank: they get the SIGTERM too and must leave it to their rank
    job = deepspeed_one_node(train_args(tiny, run, *common, "--workers", 1), 2, free_port(), start_new_session=True)
    wait_for(lambda: train_steps_logged(run) >= 2, [job])
    os.killpg(job.pid, signal.SIGTERM)
    output, _ = job.communicate(timeout=600)
    # DeepSpeed's launcher exits 1 whenever it was signalled; the ranks' own lines say they stopped cleanly
    assert output.count("train_repr: pre-empted at step") == 2, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert (run / "checkpoints" / "latest").read_text().strip().endswith("-mid")
    finish([deepspeed_one_node(train_args(tiny, run, *common, "--resume"), 2, free_port())])
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(run))
