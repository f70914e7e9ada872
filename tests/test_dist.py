"""World from the launcher's environment, and tearing the process group down at exit."""
import pytest
import torch.distributed as dist

from lt_dist.dist import World, process_group_closed_at_exit


def test_world_from_launcher_variables_and_defaults():
    assert World.from_env({}) == World(0, 1, 0)
    world = World.from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (world.rank, world.world_size, world.local_rank, world.is_main) == (3, 8, 1, False)
    with pytest.raises(ValueError, match="rank 8 is not in a world of size 8"):
        World.from_env({"RANK": "8", "WORLD_SIZE": "8"})
    with pytest.raises(ValueError, match="bad RANK"):
        World.from_env({"RANK": "zero"})


def start_group(tmp_path, name):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / name}", rank=0, world_size=1)
    assert dist.is_initialized()


def test_the_group_is_destroyed_after_success_and_after_an_error(tmp_path):
    start_group(tmp_path, "ok")
    with process_group_closed_at_exit():
        dist.barrier()
    assert not dist.is_initialized()

    start_group(tmp_path, "error")
    with pytest.raises(RuntimeError, match="disk full"):
        with process_group_closed_at_exit():
            raise RuntimeError("disk full")
    assert not dist.is_initialized()


def test_without_a_group_it_does_nothing():
    with process_group_closed_at_exit():
        pass
    assert not dist.is_initialized()


@pytest.mark.parametrize("environ, node", [
    ({"RANK": "3", "WORLD_SIZE": "4", "GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2"}, (1, 2)),  # torchrun
    ({"RANK": "3", "WORLD_SIZE": "4", "CROSS_RANK": "1", "CROSS_SIZE": "2"}, (1, 2)),  # deepspeed's launcher
    ({"RANK": "5", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "2"}, (2, 3)),  # only the ranks per node known
    ({"RANK": "1", "WORLD_SIZE": "2"}, (0, 1)),  # nothing said: one node
])
def test_node_rank_and_count_from_each_launchers_variables(environ, node):
    world = World.from_env(environ)
    assert (world.node_rank, world.num_nodes) == node


def test_a_node_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="node 2 of 2 does not fit"):
        World(0, 4, 0, node_rank=2, num_nodes=2)
    with pytest.raises(ValueError, match="node 0 of 5 does not fit a world of size 4"):
        World.from_env({"WORLD_SIZE": "4", "CROSS_SIZE": "5"})
