"""Stage 1 started the ways clusters start it, for the multi-process tests.

Every "node" is a separate launcher on 127.0.0.1, the way DeepSpeed's and torch's own
tests fake several machines: `deepspeed --no_ssh --node_rank I`, `torchrun --nnodes 2
--node_rank I`, or one process per rank with the variables Slurm's srun would set.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import REPO, make_image_folder

BIN = Path(sys.executable).parent
SCRIPT = REPO / "launch" / "train_repr.py"
DS_CONFIG = {"train_batch_size": 16, "optimizer": {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9,
             "weight_decay": 5e-4}}, "zero_optimization": {"stage": 1},
             "zero_allow_untested_optimizer": True, "steps_per_print": 1000000}
TINY = ["--arch", "resnet10", "--small-input", "--train-preset", "small_train", "--eval-preset", "small_eval",
        "--image-size", "16", "--decoder", "torchvision", "--eval-batch-size", "16", "--log-every", "1",
        "--workers", "0"]


def build_tiny_dataset(root: Path) -> Path:
    """root/ds (train 62/32/14/8, val 2 per class, test 3 per class; 20x20 JPEGs) and root/ds.json."""
    from lt_dist.cli import main

    train = make_image_folder(root / "train_images", [62, 32, 14, 8], size=(20, 20))
    test = make_image_folder(root / "test_images", [3, 3, 3, 3], seed=5, size=(20, 20))
    assert main(["pack", str(train), "--out", str(root / "ds"), "--val-per-class", "2", "--no-progress"]) == 0
    assert main(["pack", str(test), "--out", str(root / "ds"), "--split", "test", "--no-progress"]) == 0
    (root / "ds.json").write_text(json.dumps(DS_CONFIG))
    return root


def environment(**extra: str) -> dict:
    """The launchers' environment: one thread per rank, unbuffered output, the shared op cache."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return env


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_args(root: Path, out: Path, *extra) -> list[str]:
    """train_repr.py's arguments for the tiny dataset."""
    return [str(SCRIPT), "--ds_config", str(root / "ds.json"), "--data", str(root / "ds"), "--out", str(out),
            *TINY, *map(str, extra)]


def start_ranks(args: list[str], world_size: int, port: int, ranks_per_node: int | None = None,
                **popen) -> list[subprocess.Popen]:
    """One `python train_repr.py` per rank, as `srun` or a Kubernetes job starts them (no launcher process)."""
    per_node = ranks_per_node or world_size
    processes = []
    for rank in range(world_size):
        env = environment(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank % per_node),
                          LOCAL_WORLD_SIZE=str(per_node), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        processes.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, **popen))
    return processes


def deepspeed_node(args: list[str], hostfile: Path, node_rank: int, port: int, env: dict | None = None,
                   **popen) -> subprocess.Popen:
    """One node's `deepspeed --no_ssh` launcher (every node runs the same command but --node_rank);
    env: variables this node's launcher (and so its ranks) gets besides environment()'s."""
    command = [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
               "--master_addr", "127.0.0.1", "--master_port", str(port), *args]
    return subprocess.Popen(command, cwd=REPO, env=environment(**(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def deepspeed_one_node(args: list[str], procs: int, port: int, **popen) -> subprocess.Popen:
    """`deepspeed --num_gpus procs` on this machine alone."""
    command = [str(BIN / "deepspeed"), "--num_gpus", str(procs), "--master_port", str(port), *args]
    return subprocess.Popen(command, cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def finish(processes: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    """Wait for every process; assert each exited 0; their outputs."""
    outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return outputs


def final_weights(run: Path) -> dict:
    """Module weights of the newest checkpoint of a run."""
    tag = (run / "checkpoints" / "latest").read_text().strip()
    path = run / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def assert_same_weights(expected: dict, actual: dict) -> None:
    """Bit-identical state dicts."""
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
