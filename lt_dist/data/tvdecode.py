"""Decode + augment with torchvision/PIL: the presets without DALI.

The reference the DALI path is checked against, and the decoder for machines
where DALI is not installed. It runs in the calling process; parallelism comes from
DataLoader workers upstream, each with its own seeded generator.

Every random draw (crop window, flip, jitter factors and order) comes from the
torch.Generator passed in, never from torch's global RNG, so a stream of samples
decodes identically given (seed, input order).
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator

import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as F

from lt_dist.data.presets import Preset

# The EXIF tag that says how the camera was held; 1 = upright.
_EXIF_ORIENTATION = 0x0112


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 tensor (3, H, W), RGB, EXIF orientation applied.

    Grayscale and palette images become 3 channels, alpha is dropped (as DALI's
    output_type=RGB does). PIL rather than torchvision.io: the latter's decoders
    are deprecated since torchvision 0.29 (a DeprecationWarning on every call), and
    PIL reads every format the shards may hold with the same libjpeg-turbo.
    """
    with Image.open(io.BytesIO(data)) as image:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        rgb = image.convert("RGB")
    return F.pil_to_tensor(rgb)


def random_resized_crop_params(
    height: int, width: int, preset: Preset, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop window, torchvision's algorithm.

    Same as torchvision.transforms.v2.RandomResizedCrop.make_params (10 attempts,
    then a central crop clamped to the ratio range), with draws from `generator`.
    """
    area = height * width
    log_lo, log_hi = math.log(preset.ratio[0]), math.log(preset.ratio[1])
    for _ in range(10):
        target_area = area * _uniform(preset.scale[0], preset.scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < preset.ratio[0]:
        w, h = width, int(round(width / preset.ratio[0]))
    elif in_ratio > preset.ratio[1]:
        h, w = height, int(round(height * preset.ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    """One float drawn uniformly from [low, high)."""
    return float(torch.empty(1).uniform_(low, high, generator=generator))


def color_jitter(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """ColorJitter(strength, strength, strength, 0) on a uint8 (3, H, W) tensor.

    Factors are uniform in [1 - strength, 1 + strength]; the three adjustments are
    applied in a random order, as torchvision's ColorJitter does.
    """
    order = torch.randperm(3, generator=generator).tolist()
    factors = [_uniform(1 - strength, 1 + strength, generator) for _ in range(3)]
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for index in order:
        image = adjust[index](image, factors[index])
    return image


def normalize(image: torch.Tensor, preset: Preset) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 (3, H, W): (x / 255 - mean) / std."""
    scaled = F.to_dtype(image, torch.float32, scale=True)
    return F.normalize(scaled, mean=list(preset.mean), std=list(preset.std))


def decode_sample(data: bytes, preset: Preset, generator: torch.Generator) -> torch.Tensor:
    """Encoded image bytes -> float32 (3, crop_size, crop_size), normalised.

    Train: RandomResizedCrop(crop_size, scale, ratio) with bilinear antialiased
    resize, flip with p=1/2, optional colour jitter. Eval: Resize(resize_size) on
    the short side (antialiased bilinear), CenterCrop(crop_size). The generator is
    only drawn from for train presets.
    """
    image = decode_rgb(data)
    size = [preset.crop_size, preset.crop_size]
    if not preset.train:
        image = F.resize(image, [preset.resize_size], antialias=True)
        return normalize(F.center_crop(image, size), preset)
    top, left, h, w = random_resized_crop_params(image.shape[-2], image.shape[-1], preset, generator)
    image = F.resized_crop(image, top, left, h, w, size, antialias=True)
    # The coin is drawn only when flip is on, like the transform being absent.
    if preset.flip and bool(torch.rand(1, generator=generator) < 0.5):
        image = F.horizontal_flip(image)
    if preset.color_jitter > 0:
        image = color_jitter(image, preset.color_jitter, generator)
    return normalize(image, preset)


class TorchvisionDecoder:
    """Iterator over decoded batches: (images float32 (N, 3, H, W), labels int64 (N,)).

    Same contract as DaliDecoder: `batches` yields lists of (encoded bytes, label)
    of at most `batch_size` samples (the last may be smaller); the iterator ends
    when the input ends, in input order, nothing dropped or repeated. Outputs are
    on the CPU. `num_threads` and `prefetch` are accepted for the shared contract
    and unused: this decoder works synchronously in the calling process.
    """

    def __init__(
        self,
        batches: Iterable[list[tuple[bytes, int]]],
        preset: Preset,
        batch_size: int,
        num_threads: int = 2,
        seed: int = 0,
        prefetch: int = 2,
        device: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device not in (None, "cpu"):
            raise ValueError(f"TorchvisionDecoder decodes on the CPU only: device must be None or 'cpu', got {device!r}")
        self.preset = preset
        self.batch_size = batch_size
        self._batches = iter(batches)
        self._generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(self._batches)
        while not batch:  # an empty batch carries no samples; skip it
            batch = next(self._batches)
        if len(batch) > self.batch_size:
            raise ValueError(f"a batch of {len(batch)} samples exceeds batch_size {self.batch_size}")
        images = torch.stack([decode_sample(data, self.preset, self._generator) for data, _ in batch])
        labels = torch.tensor([label for _, label in batch], dtype=torch.int64)
        return images, labels
