"""`lt_dist launch`'s command line and environment (the Ctrl-C path runs in test_interrupt.py)."""
import os

from lt_dist.cli import main
from lt_dist.commands.launch import runner_command, runner_environment


def test_quiet_is_added_unless_a_level_is_given():
    assert runner_command(["--num_gpus", "2", "x.py"])[-4:] == ["--quiet", "--num_gpus", "2", "x.py"]
    assert "--quiet" not in runner_command(["--log_level", "info", "x.py"])
    assert runner_command(["--quiet", "x.py"]).count("--quiet") == 1


def test_cpu_accelerator_is_named_only_without_a_gpu_and_never_over_the_users_choice():
    assert runner_environment({"DS_ACCELERATOR": "cuda"})["DS_ACCELERATOR"] == "cuda"
    expected = None if os.path.exists("/dev/nvidiactl") else "cpu"
    assert runner_environment({}).get("DS_ACCELERATOR") == expected


def test_launch_without_arguments_is_one_line_exit_2(capsys):
    assert main(["launch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "launch needs what you would pass to deepspeed" in err[0]
