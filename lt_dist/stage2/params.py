"""Parameters of the stage-2 methods: what every method accepts, and filling in a method's defaults.

A leaf module (no stage-2 import), so methods.py and later.py both resolve their
parameters through it without importing each other.
"""
from __future__ import annotations

COMMON_PARAMS = {"threads": None, "device": "cpu"}  # accepted by every method


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
