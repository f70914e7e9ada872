"""lt_dist.cpu_budget.plan_cpus: a node's cores split among its ranks, checked case by case."""
import pytest

from lt_dist.cpu_budget import MAX_WORKERS, plan_cpus


@pytest.mark.parametrize("cpus, ranks, decoder, on_gpu, expected", [
    # (torch threads, DALI threads, workers) per rank
    (2, 2, "dali", False, (1, 1, 0)),  # the demo: one core per rank, nothing to split
    (16, 1, "dali", False, (12, 4, 0)),
    (16, 2, "dali", False, (6, 2, 0)),
    (32, 8, "dali", True, (1, 3, 0)),  # a GPU node: the step is on the GPU, the cores decode
    (2, 2, "torchvision", False, (1, 1, 0)),  # a one-core share decodes in the rank itself
    (8, 1, "torchvision", False, (1, 1, 7)),
    (32, 1, "torchvision", False, (24, 1, MAX_WORKERS)),
    (96, 1, "torchvision", True, (1, 1, MAX_WORKERS)),
    (3, 4, "dali", False, (1, 1, 0)),  # more ranks than cores: every rank still gets a thread of each
])
def test_plan_per_rank(cpus, ranks, decoder, on_gpu, expected):
    plan = plan_cpus(cpus, ranks, decoder, on_gpu)
    assert (plan.torch_threads, plan.dali_threads, plan.workers) == expected
    assert f"{cpus} cores shared by {ranks} rank(s)" in plan.why


# every node shape where each rank has two cores or more (one core cannot keep a step thread and a
# decoding thread apart)
SHAPES = [(cpus, ranks) for cpus in (4, 8, 16, 64, 128) for ranks in (1, 2, 4, 8) if cpus // ranks >= 2]


@pytest.mark.parametrize("cpus, ranks", SHAPES)
@pytest.mark.parametrize("decoder", ["dali", "torchvision"])
@pytest.mark.parametrize("on_gpu", [False, True])
def test_a_node_is_never_oversubscribed(cpus, ranks, decoder, on_gpu):
    plan = plan_cpus(cpus, ranks, decoder, on_gpu)
    decoding = plan.dali_threads if decoder == "dali" else plan.workers
    assert ranks * (plan.torch_threads + decoding) <= cpus
    assert plan.torch_threads >= 1 and decoding >= 1


def test_given_workers_leave_torch_the_rest_of_the_share():
    assert (plan_cpus(16, 2, "torchvision", False, workers=2).torch_threads,
            plan_cpus(16, 2, "torchvision", False, workers=20).torch_threads) == (6, 1)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="got 0, 1"):
        plan_cpus(0, 1, "dali", False)
