"""How a node's cores are shared by its ranks: torch threads, DALI threads and loader workers.

Left alone, every rank starts as many torch threads as the node has cores, DALI adds its own
decode threads and each loader worker is one more process: two ranks on a 2-core machine then
run eight busy threads on two cores, and most of the time goes to switching between them. The
plan gives each rank an equal share of the cores and splits that share between the step and
the decoding, so the node's threads add up to its cores (a share of one core is the floor: one
torch thread and one DALI thread still run there). Pure: the caller applies and logs it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

MAX_WORKERS = 8  # beyond this, worker processes cost more memory than they add throughput


@dataclass(frozen=True)
class CpuPlan:
    """Per rank: intra-op torch threads, DALI decode threads, loader worker processes."""

    torch_threads: int
    dali_threads: int
    workers: int
    why: str


def node_cpus() -> int:
    """The cores this process may run on (its affinity mask: what a scheduler gave the job)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan_cpus(cpus: int, ranks_on_node: int, decoder: str, on_gpu: bool, workers: int | None = None) -> CpuPlan:
    """Split `cpus` among `ranks_on_node` ranks, then each share between the step and decoding.

    DALI decodes in threads of the rank: on a GPU the step runs there, so one torch thread and
    the rest of the share decodes; on a CPU the step is the larger cost, so torch gets three
    quarters of the share. torchvision decodes in worker processes: the share less one (at most
    MAX_WORKERS) unless `workers` is given, and torch keeps what the workers leave (one thread
    on a GPU).
    """
    if cpus < 1 or ranks_on_node < 1:
        raise ValueError(f"need cpus >= 1 and ranks_on_node >= 1, got {cpus}, {ranks_on_node}")
    share = max(1, cpus // ranks_on_node)
    where = f"{cpus} cores shared by {ranks_on_node} rank(s) on this node, {share} each"
    if decoder == "dali":
        decode = max(1, share - 1) if on_gpu else max(1, share // 4)
        torch_threads = 1 if on_gpu else max(1, share - decode)
        return CpuPlan(torch_threads, decode, 0, f"{where}; DALI decodes in {decode} thread(s)")
    workers = max(0, min(MAX_WORKERS, share - 1)) if workers is None else workers
    torch_threads = 1 if on_gpu else max(1, share - workers)
    return CpuPlan(torch_threads, 1, workers, f"{where}; {workers} loader worker process(es) decode")
