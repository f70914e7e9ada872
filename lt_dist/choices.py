"""The names a user types (arch, loss and its parameters, sampler, presets) without heavy imports.

The entry points check these before importing torch/DeepSpeed, so a typo costs well
under a second instead of the seconds of start-up. The tables mirror the real ones
(models.resnet.MODELS, losses.LOSSES); tests/test_choices.py keeps them equal.
Also the defaults that depend on the machine (loader workers), stated in one place.
"""
from __future__ import annotations

from lt_dist.cpu_budget import node_cpus, plan_cpus

ARCHS = ("resnet10", "resnet18", "resnet50", "resnet101", "resnet152",
         "resnext50_32x4d", "resnext101_32x4d", "resnext152_32x4d")

# loss name -> {parameter: default}: the keyword arguments of its constructor after the counts
LOSS_PARAMS: dict[str, dict[str, float | bool]] = {
    "ce": {},
    "focal": {"gamma": 2.0},
    "class_balanced": {"beta": 0.9999},
    "class_balanced_focal": {"beta": 0.9999, "gamma": 2.0},
    "ldam": {"max_margin": 0.5, "scale": 30.0, "drw": True, "drw_start": 0.8, "beta": 0.9999},
    "logit_adjusted": {"tau": 1.0},
    "balanced_softmax": {},
}


def loss_help() -> str:
    """One line per loss with its parameters and defaults, for --help."""
    lines = []
    for name, params in LOSS_PARAMS.items():
        taken = ", ".join(f"{key}={value}" for key, value in params.items()) or "no parameters"
        lines.append(f"  {name:<15} {taken}")
    return "\n".join(lines)


def check_loss_params(loss: str, params: dict) -> None:
    """Raise ValueError (one line) for an unknown loss or a parameter the loss does not take."""
    if loss not in LOSS_PARAMS:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_PARAMS)}")
    accepted = LOSS_PARAMS[loss]
    for key in params:
        if key not in accepted:
            takes = ", ".join(f"{k} (default {v})" for k, v in accepted.items()) or "no parameters"
            raise ValueError(f"loss {loss!r} has no parameter {key!r}; it takes {takes}")


def check_names(arch: str, loss: str, loss_params: dict, sampler: str, presets: tuple[str, ...]) -> None:
    """Raise ValueError naming the first unknown name; imports only numpy-level modules."""
    from lt_dist.data.balance import resolve_strategy
    from lt_dist.data.presets import PRESETS

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    check_loss_params(loss, loss_params)
    resolve_strategy(sampler)
    for preset in presets:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; accepted: {', '.join(sorted(PRESETS))}")


def default_workers(decoder: str, cpu_count: int | None = None, ranks_on_node: int = 1) -> tuple[int, str]:
    """(loader worker processes per rank, why) for a decoder on this machine.

    DALI runs its own decoding threads inside the rank: extra processes only duplicate
    its pipelines, so 0. torchvision decodes in the workers: the node's CPUs shared by
    its ranks, one left for the rank itself, at most 8 (cpu_budget.plan_cpus).
    """
    if decoder == "dali":
        return 0, "DALI decodes in its own threads"
    cpus = cpu_count if cpu_count is not None else node_cpus()
    workers = plan_cpus(cpus, ranks_on_node, decoder, on_gpu=False).workers
    return workers, f"torchvision decoding, {cpus} CPUs shared by {ranks_on_node} rank(s) on this node"
