"""Parameters of the stage-2 methods: what every method accepts, and filling in a method's defaults.

A leaf module (no stage-2 import), so methods.py and later.py both resolve their
parameters through it without importing each other.
"""
from __future__ import annotations

COMMON_PARAMS = {"threads": None, "device": "cpu"}  # accepted by every method

# The optimisation keys every trained method takes (SGD with momentum, cosine lr to 0).
# lr_schedule "step" (cosine every step) or "epoch" (held per epoch, as the official scheduler);
# min_steps: the batch shrinks so that training takes at least that many optimizer steps;
# keep_best: after every epoch score the val features and keep the best epoch's parameters
# (the official loop's best-on-val model), else the last epoch's.
SGD_DEFAULTS = {"lr": 0.2, "batch_size": 512, "momentum": 0.9, "lr_schedule": "step", "min_steps": 0,
                "keep_best": False}


def resolve(method: str, params: dict | None, defaults: dict[str, dict]) -> dict:
    """defaults[method] and COMMON_PARAMS updated by `params`; an unknown method or key raises ValueError.

    Args:
        defaults: method name -> its default params (the DEFAULT_PARAMS table).
    """
    if method not in defaults:
        raise ValueError(f"unknown stage-2 method {method!r}; choose one of {', '.join(defaults)}")
    known = {**defaults[method], **COMMON_PARAMS}
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for {method!r}; "
                         f"accepted: {', '.join(known)}")
    return {**known, **(params or {})}
