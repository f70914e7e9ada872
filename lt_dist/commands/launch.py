"""`lt_dist launch`: DeepSpeed's launcher, quiet, with a Ctrl-C that keeps the work.

    lt_dist launch --num_gpus 2 launch/train_repr.py --ds_config launch/ds.json ...

Runs DeepSpeed's own runner (what the `deepspeed` command runs) with every argument as
given. Three differences, all for a person at a terminal:
  * `--quiet` is added unless a `--log_level`/`--quiet` is given: DeepSpeed's launcher
    logs its set-up at INFO level ("Setting CUDA_VISIBLE_DEVICES=0" even on a CPU);
  * DS_ACCELERATOR=cpu is set where the machine has no NVIDIA device and the variable is
    unset, instead of DeepSpeed warning that it found no accelerator;
  * the runner starts in a session of its own, so the terminal's Ctrl-C reaches this
    process only. It forwards SIGINT (and SIGTERM) to the ranks alone, the children of
    DeepSpeed's per-node `deepspeed.launcher.launch` processes. The ranks finish their
    step, checkpoint at one agreed step, print one line and exit 130; DeepSpeed's
    launcher then ends with that code, and so does this command. Without it, DeepSpeed's
    launcher kills the ranks 30 s after a Ctrl-C, exits 1 and its runner prints a
    KeyboardInterrupt traceback. A second Ctrl-C is forwarded too: the ranks exit at once.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

LAUNCHER_MODULE = "deepspeed.launcher.launch"  # one per node; its children are the ranks


def add_parsers(subparsers) -> None:
    """Register `launch`."""
    parser = subparsers.add_parser(
        "launch", help="run DeepSpeed's launcher quietly; Ctrl-C checkpoints and exits 130",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("deepspeed_args", nargs=argparse.REMAINDER,
                        help="what you would pass to `deepspeed` (its options, the script, its options)")
    parser.set_defaults(run=run_launch)


def runner_command(deepspeed_args: list[str]) -> list[str]:
    """The runner's command line: DeepSpeed's entry point, --quiet unless a level is given."""
    quiet = [] if any(arg.startswith(("--log_level", "--quiet")) for arg in deepspeed_args) else ["--quiet"]
    return [sys.executable, "-c", "from deepspeed.launcher.runner import main; main()", *quiet, *deepspeed_args]


def runner_environment(environ: dict) -> dict:
    """environ, plus DS_ACCELERATOR=cpu on a machine without an NVIDIA device (unless set)."""
    env = dict(environ)
    if "DS_ACCELERATOR" not in env and not os.path.exists("/dev/nvidiactl"):
        env["DS_ACCELERATOR"] = "cpu"
    return env


def rank_processes(runner_pid: int) -> list:
    """psutil processes of the ranks under the runner: children of a DeepSpeed launcher."""
    import psutil

    try:
        descendants = psutil.Process(runner_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    ranks = []
    for process in descendants:
        try:
            parent = process.parent()
            if parent is not None and LAUNCHER_MODULE in " ".join(parent.cmdline()):
                ranks.append(process)
        except psutil.Error:  # gone meanwhile
            continue
    return ranks


def run_launch(args) -> int:
    """Start the runner in its own session; forward SIGINT/SIGTERM to the ranks; its exit code."""
    from lt_dist.errors import UserInputError

    if not args.deepspeed_args:
        raise UserInputError("launch needs what you would pass to deepspeed, e.g. "
                             "`lt_dist launch --num_gpus 2 launch/train_repr.py --ds_config launch/ds.json ...`")
    runner = subprocess.Popen(runner_command(args.deepspeed_args), env=runner_environment(os.environ),
                              start_new_session=True)

    def forward(signum, frame) -> None:
        for rank in rank_processes(runner.pid):
            try:
                rank.send_signal(signum)
            except Exception:  # a rank that already exited
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
