"""Optional packages: is one installed, and a one-line refusal naming it when a feature needs it.

lt-dist runs where only torch, torchvision, numpy, pyarrow and pillow are installed
(a bare GPU image, for instance); DeepSpeed, DALI, Ray and TensorBoard come with
extras. Whether one is there is read from the import system without importing it
(importing DALI or Ray costs seconds), and a feature that needs a missing one stops
with UserInputError (exit 2, one line) before any work starts.
"""
from __future__ import annotations

import importlib.util

from lt_dist.errors import UserInputError

# module -> (what to install, the lt-dist extra that carries it)
PACKAGES: dict[str, tuple[str, str]] = {
    "deepspeed": ("deepspeed", "deepspeed"),
    "nvidia.dali": ("nvidia-dali-cuda120", "dali"),
    "ray": ("ray[tune]", "tune"),
    "tensorboard": ("tensorboard", "deepspeed"),
}


def installed(module: str) -> bool:
    """True when `module` (dotted names too: "nvidia.dali") can be imported; imports nothing but its parents."""
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        if importlib.util.find_spec(".".join(parts[:depth])) is None:
            return False
    return True


def require(module: str, feature: str) -> None:
    """Raise UserInputError naming the package and its extra when `module` is not installed."""
    if installed(module):
        return
    package, extra = PACKAGES.get(module, (module, None))
    hint = f"pip install 'lt-dist[{extra}]' or pip install {package}" if extra else f"pip install {package}"
    raise UserInputError(f"{feature} needs the Python package {package}, which is not installed here ({hint})")


def default_decoder() -> str:
    """"dali" where DALI is installed, else "torchvision" (nvJPEG on a GPU, PIL on the CPU)."""
    return "dali" if installed("nvidia.dali") else "torchvision"
