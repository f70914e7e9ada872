"""torchvision decode + augment of whole batches on one device: nvJPEG on a GPU without DALI.

The per-sample path (tvdecode.decode_sample) runs in the loader's worker processes on
the CPU. This module is what `--decoder torchvision` does on a CUDA machine: the
workers only read the encoded bytes, and the main process decodes a batch at once
    encoded bytes (N,) -> decode_images -> uint8 (3, H_i, W_i) per sample on the device
        JPEGs nvJPEG can take: torchvision.io.decode_jpeg(list, device="cuda") (one call)
        anything else (PNG, CMYK, EXIF-rotated): PIL on the CPU, then copied over
    -> augment_batch -> float32 (N, 3, S, S) on the device
        per sample: the crop window (train) or short-side resize + centre crop (eval)
        per batch: flip, colour jitter (per-sample factors and order), normalise
Every random number is drawn from a CPU torch.Generator in exactly decode_sample's
order (sample by sample: crop window, flip coin, jitter order, jitter factors), so
the same seed gives the same crops and flips as the CPU path; pixels agree to within
one grey level (a batched blend rounds differently from torchvision's per-image one;
nvJPEG's IDCT differs from libjpeg-turbo's by a level or two on a GPU).

The device is chosen up front (resolve_device): CUDA when torch sees it. There is no
try-the-GPU-then-fall-back: the format check (nvjpeg_decodable) decides per sample
from the header which decoder gets it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from lt_dist.data.presets import Preset
from lt_dist.data.tvdecode import _EXIF_ORIENTATION, _uniform, decode_rgb, normalize, random_resized_crop_params

# Modes PIL reports for the JPEGs nvJPEG decodes to RGB as libjpeg-turbo does
# (YCbCr or grayscale); CMYK/YCCK JPEGs go to PIL.
_NVJPEG_MODES = ("RGB", "L")


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device | None:
    """Where batches are decoded: None = per sample in the loader workers (CPU).

    device None: torch.device("cuda", local_rank) when CUDA is available, else None.
    An explicit "cpu" runs this module's batch path on the CPU (tests, dry runs);
    "cuda"/"cuda:N" without CUDA raises ValueError naming the value.
    """
    if device is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else None
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown decode device {device!r}; accepted: None (auto), cpu, cuda, cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown decode device {device!r}; accepted: None (auto), cpu, cuda, cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"decode device {device!r} needs CUDA, and torch.cuda.is_available() is False; use 'cpu'")
    return resolved


def nvjpeg_decodable(data: bytes) -> bool:
    """True for a JPEG that nvJPEG turns into the same RGB image PIL does.

    From the header only (PIL opens lazily): a JPEG in YCbCr or grayscale whose EXIF
    orientation (if any) is upright. decode_jpeg on CUDA ignores EXIF orientation.
    """
    with Image.open(io.BytesIO(data)) as image:
        return (image.format == "JPEG" and image.mode in _NVJPEG_MODES
                and image.getexif().get(_EXIF_ORIENTATION, 1) == 1)


def decode_images(data: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """Encoded images -> uint8 (3, H_i, W_i) RGB tensors on `device`, in input order.

    On CUDA the nvJPEG-decodable ones go to torchvision.io.decode_jpeg in one batched
    call; the rest (and every image on the CPU) are decoded by PIL (tvdecode.decode_rgb).
    """
    if device.type != "cuda":
        return [decode_rgb(item) for item in data]
    from torchvision.io import ImageReadMode, decode_jpeg

    on_gpu = [index for index, item in enumerate(data) if nvjpeg_decodable(item)]
    images: list[torch.Tensor | None] = [None] * len(data)
    if on_gpu:
        # bytearray: a writable copy, as torch.frombuffer wants (the bytes are immutable)
        encoded = [torch.frombuffer(bytearray(data[index]), dtype=torch.uint8) for index in on_gpu]
        for index, image in zip(on_gpu, decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)):
            images[index] = image
    for index, image in enumerate(images):
        if image is None:
            images[index] = decode_rgb(data[index]).to(device, non_blocking=True)
    return images


@dataclass(frozen=True)
class SampleDraws:
    """The random choices for one training sample, in decode_sample's draw order."""

    window: tuple[int, int, int, int]  # (top, left, h, w) of the RandomResizedCrop
    flip: bool
    jitter_order: tuple[int, ...]  # indices into (brightness, contrast, saturation); () without jitter
    jitter_factors: tuple[float, ...]  # factor per adjustment, same indexing


def draw_sample(height: int, width: int, preset: Preset, generator: torch.Generator) -> SampleDraws:
    """The draws decode_sample makes for one image of height x width (train presets)."""
    window = random_resized_crop_params(height, width, preset, generator)
    flip = preset.flip and bool(torch.rand(1, generator=generator) < 0.5)
    order: tuple[int, ...] = ()
    factors: tuple[float, ...] = ()
    if preset.color_jitter > 0:
        order = tuple(torch.randperm(3, generator=generator).tolist())
        factors = tuple(_uniform(1 - preset.color_jitter, 1 + preset.color_jitter, generator) for _ in range(3))
    return SampleDraws(window, flip, order, factors)


def augment_batch(images: list[torch.Tensor], preset: Preset, generator: torch.Generator) -> torch.Tensor:
    """uint8 (3, H_i, W_i) per sample, all on one device -> float32 (N, 3, S, S) there, normalised.

    The transforms of decode_sample with the same draws from `generator` (train) or
    none (eval); only the per-sample geometry runs image by image.
    """
    size = [preset.crop_size, preset.crop_size]
    if not preset.train:
        batch = torch.stack([F.center_crop(F.resize(image, [preset.resize_size], antialias=True), size)
                             for image in images])
        return normalize(batch, preset)
    draws = [draw_sample(image.shape[-2], image.shape[-1], preset, generator) for image in images]
    batch = torch.stack([F.resized_crop(image, *draw.window, size, antialias=True)
                         for image, draw in zip(images, draws)])
    flips = [index for index, draw in enumerate(draws) if draw.flip]
    if flips:
        rows = torch.tensor(flips, device=batch.device)
        batch[rows] = batch[rows].flip(-1)
    if preset.color_jitter > 0:
        batch = color_jitter_batch(batch, [draw.jitter_order for draw in draws],
                                   [draw.jitter_factors for draw in draws])
    return normalize(batch, preset)


def color_jitter_batch(batch: torch.Tensor, orders: list[tuple[int, ...]],
                       factors: list[tuple[float, ...]]) -> torch.Tensor:
    """tvdecode.color_jitter for a uint8 batch (N, 3, H, W), each sample its own order and factors.

    Step k applies, to every sample, the adjustment its order names k-th: one batched
    blend per (step, adjustment) over the samples that chose it.
    """
    # float64: the factors are Python floats, and torchvision computes 1 - ratio in double
    factor_table = torch.tensor(factors, dtype=torch.float64)  # (N, 3)
    order_table = torch.tensor(orders, dtype=torch.int64)  # (N, 3)
    for step in range(3):
        for adjustment, adjust in enumerate((_brightness, _contrast, _saturation)):
            chosen = (order_table[:, step] == adjustment).nonzero().flatten()  # on the CPU: no device sync
            if len(chosen) == 0:
                continue
            ratio = factor_table[chosen, adjustment].view(-1, 1, 1, 1)
            weights = (ratio.float().to(batch.device), (1.0 - ratio).float().to(batch.device))
            rows = chosen.to(batch.device)
            batch[rows] = adjust(batch[rows], weights)
    return batch

def _gray(batch: torch.Tensor) -> torch.Tensor:
    """float32 (N, 1, H, W) luma of a uint8 RGB batch, floored (torchvision's uint8 grayscale)."""
    red, green, blue = batch.unbind(dim=-3)
    return red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114).unsqueeze(-3).floor_()


def _blend(batch: torch.Tensor, other: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """uint8 ratio * batch + (1 - ratio) * other, clamped and truncated: torchvision's _blend.

    weights = (ratio, 1 - ratio), float32 (N, 1, 1, 1). addcmul rounds like the fused
    add-with-alpha torchvision uses (a separate multiply and add differs by a level).
    """
    ratio, alpha = weights
    return torch.addcmul(batch.mul(ratio), other, alpha).clamp_(0, 255).to(torch.uint8)


def _brightness(batch: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return _blend(batch, torch.zeros((), device=batch.device), weights)


def _contrast(batch: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return _blend(batch, _gray(batch).mean(dim=(-3, -2, -1), keepdim=True), weights)


def _saturation(batch: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return _blend(batch, _gray(batch), weights)

def decode_batch(data: list[bytes], preset: Preset, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """Encoded images -> float32 (N, 3, S, S) on `device`: decode_images, then augment_batch."""
    return augment_batch(decode_images(data, device), preset, generator)
