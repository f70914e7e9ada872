"""Re-estimate BatchNorm running statistics on class-balanced batches (forward passes only).

The official stage 2 leaves every BN layer in train() mode while the classifier learns
on class-balanced, augmented batches, so the statistics used at test time are those of
class-balanced data. `lt_dist extract --bn-recalibrate class` gets the same effect
without training: the backbone runs `batches` class-balanced batches with the training
augmentation in train() mode under no_grad, each BN layer updating its running mean
and variance with its own momentum (0.1: the stage-1 statistics weigh 0.9^batches
afterwards, as in the official run), then the model goes back to eval(). With several
processes every rank draws its own block of the epoch and the statistics are averaged
over ranks, so every rank extracts with the same model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from lt_dist.data.loader import BalancedLoader, LoaderConfig
from lt_dist.data.sampler import SamplerConfig
from lt_dist.dist import World


def bn_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of the model, in module order."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, split_dir: str, counts: np.ndarray, preset, decoder: str,
                   batches: int, batch_size: int, workers: int, seed: int, world: World) -> int:
    """Run `batches` class-balanced training batches through model.features in train() mode.

    Args:
        model: a Classifier (its `features` is the backbone); left in eval() mode.
        counts: (C,) training images per class; preset: the TRAINING augmentation.
    Returns:
        the number of batches this rank ran (the epoch of n samples may hold fewer).
    """
    if batches < 1:
        raise ValueError(f"--bn-batches must be >= 1, got {batches}")
    device = next(model.parameters()).device
    epoch_size = batches * batch_size * world.world_size
    sampler = SamplerConfig("class", seed=seed, epoch_size=epoch_size)
    loader = BalancedLoader(LoaderConfig(split_dir, batch_size, preset, sampler, decoder, workers), world, counts)
    model.train()
    done = 0
    for images, _ in loader:
        model.features(images.to(device))
        done += 1
    model.eval()
    if world.world_size > 1 and dist.is_initialized():
        for layer in bn_layers(model):
            for buffer in (layer.running_mean, layer.running_var):
                dist.all_reduce(buffer)
                buffer /= world.world_size
    return done
