"""Stage 1 across two "nodes" on this machine: one launcher per node, 2 ranks each, gloo.

The 4-rank single-launcher run is the reference: the same ranks see the same samples, so
the two-node runs must end with the same weights.
"""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from servers import nginx_binary, nginx_serving, publish
from launchers import (BIN, assert_same_weights, build_tiny_dataset, deepspeed_node, deepspeed_one_node,
                       environment, final_weights, finish, free_port, train_args)

COMMON = ["--epochs", 1, "--seed", 11]
EXPECTED_PLACEMENTS = [{"rank": r, "local_rank": r % 2, "node_rank": r // 2} for r in range(4)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("multinode"))


@pytest.fixture(scope="module")
def one_node_run(tiny, tmp_path_factory):
    """The reference: `deepspeed --num_gpus 4`, one launcher."""
    run = tmp_path_factory.mktemp("one_node") / "run"
    finish([deepspeed_one_node(train_args(tiny, run, *COMMON), 4, free_port())])
    return run


def placements(run: Path) -> tuple[dict, list[dict]]:
    config = json.loads((run / "config.json").read_text())
    return config, [{k: p[k] for k in ("rank", "local_rank", "node_rank")} for p in config["ranks"]]


def write_hostfile(path: Path) -> Path:
    # --no_ssh never resolves these names: each launcher is told its --node_rank
    path.write_text("node-a slots=2\nnode-b slots=2\n")
    return path


@pytest.fixture
def www(tmp_path):
    """nginx on 127.0.0.1 serving a folder the test fills."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed: `make test` installs Debian's package nginx as root "
                    "(apt-get install nginx)")
    with nginx_serving(tmp_path / "nginx") as server:
        yield server


@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
def test_deepspeed_no_ssh_two_nodes_match_four_ranks_on_one_node(tiny, one_node_run, www, tmp_path):
    """The two nodes read the dataset by URL, each through its own node cache (LT_DIST_NODE_ID)."""
    url = publish(tiny / "ds", www, "multinode")
    run, hostfile, port = tmp_path / "run", write_hostfile(tmp_path / "hostfile"), free_port()
    args = train_args(tiny, run, *COMMON, "--cache-dir", tmp_path / "cache")
    args[args.index("--data") + 1] = url
    nodes = [deepspeed_node(args, hostfile, node, port, env={"LT_DIST_NODE_ID": f"node-{node}"}) for node in (0, 1)]
    outputs = finish(nodes)
    assert "nnodes=2, num_local_procs=2, node_rank=1" in outputs[1]
    config, ranks = placements(run)
    assert config["world_size"] == 4 and config["num_nodes"] == 2 and ranks == EXPECTED_PLACEMENTS
    reference, single = placements(one_node_run)
    assert reference["num_nodes"] == 1 and [p["node_rank"] for p in single] == [0] * 4
    tag = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    # every rank of both nodes wrote its optimizer part into the one shared tag folder, rank 0 the model
    # and the whole ZeRO state (for a resume on another world size)
    parts = ["lt_full_zero_state.pt", "mp_rank_00_model_states.pt",
             *(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4))]
    assert sorted(p.name for p in tag.iterdir()) == sorted(["lt_manifest.json", *parts])
    # rank 0's manifest, written after every rank of both nodes saved, accounts for each part
    assert sorted(json.loads((tag / "lt_manifest.json").read_text())["files"]) == parts
    assert_same_weights(final_weights(one_node_run), final_weights(run))
    # each node downloaded each shard its ranks read once, into its own cache: train's twice in all
    gets: dict[str, int] = {}
    for method, path, status in www.requests():  # (404s are probes: is /ds itself a split?)
        if method == "GET" and status == 200 and (path.endswith(".tar") or path.endswith("manifest.parquet")):
            gets[path] = gets.get(path, 0) + 1
    train = [f"/multinode/ds/train/{p.name}" for p in (tiny / "ds" / "train").glob("*.tar")]
    assert train and all(gets.get(path) == 2 for path in train + ["/multinode/ds/train/manifest.parquet"]), gets
    assert max(gets.values()) == 2, gets
    for node in ("node-0", "node-1"):
        cached = {p.name for p in (tmp_path / "cache" / node).rglob("*.tar")}
        assert {Path(path).name for path in train} <= cached, node


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
def test_torchrun_two_nodes_match_four_ranks_on_one_node(tiny, one_node_run, tmp_path):
    run, port = tmp_path / "run", free_port()
    nodes = [subprocess.Popen([str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node",
                               "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               *train_args(tiny, run, *COMMON)], cwd=REPO, env=environment(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    finish(nodes)
    config, ranks = placements(run)
    assert config["num_nodes"] == 2 and ranks == EXPECTED_PLACEMENTS
    assert_same_weights(final_weights(one_node_run), final_weights(run))
