"""Quiet start-up: the libraries' warnings that tell a user nothing are dropped unless --verbose.

DeepSpeed warns on every CPU start ("Setting accelerator to CPU", "untested optimizer"
for the SGD that lt-dist's ds.json chooses on purpose), and torch's extension builder
says "No CUDA runtime is found" on a machine that was never meant to have one. The
filters go on the named loggers before those libraries are imported; logger objects
persist, so the libraries' own setLevel calls do not remove them.
"""
from __future__ import annotations

import logging

# logger name -> messages (substrings) dropped unless verbose
NOISE: dict[str, tuple[str, ...]] = {
    "DeepSpeed": ("Setting accelerator to CPU", "untested optimizer", "Setting ds_accelerator"),
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
}


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_startup(verbose: bool) -> None:
    """Install the filters (idempotent); verbose=True leaves every message as it is."""
    if verbose:
        return
    for name, fragments in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
