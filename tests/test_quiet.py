"""quiet_startup drops the named libraries' noise and nothing else; verbose keeps everything."""
import logging

from lt_dist.quiet import quiet_startup


def test_noise_is_dropped_and_other_warnings_pass(caplog):
    quiet_startup(verbose=False)
    quiet_startup(verbose=False)  # idempotent: one filter
    logger = logging.getLogger("DeepSpeed")
    assert sum(type(f).__name__ == "_DropMessages" for f in logger.filters) == 1
    with caplog.at_level(logging.INFO):
        logger.warning("**** You are using ZeRO with an untested optimizer, proceed with caution *****")
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
        logger.warning("gradient overflow")
    assert [r.getMessage() for r in caplog.records] == ["gradient overflow"]
