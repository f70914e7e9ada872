"""Batched torchvision decode (the GPU path without DALI), checked on the CPU against decode_sample."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import encode_image
from lt_dist.data.presets import get_preset
from lt_dist.data.tvbatch import (augment_batch, decode_batch, decode_images, draw_sample, nvjpeg_decodable,
                                  resolve_device)
from lt_dist.data.tvdecode import decode_rgb, decode_sample

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photos(china) -> list[bytes]:
    """Twelve JPEG crops of the photo, of different sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(12):
        height, width = int(rng.integers(120, 400)), int(rng.integers(120, 600))
        top, left = int(rng.integers(0, 427 - height)), int(rng.integers(0, 640 - width))
        crops.append(encode_image(china[top:top + height, left:left + width], quality=90))
    return crops


@pytest.mark.parametrize("preset_name", ["imagenet_train", "imagenet_eval", "small_train", "small_eval"])
def test_batch_path_equals_the_per_sample_path_bit_for_bit(photos, preset_name):
    """Same seed, same draws, same pixels: the batched jitter rounds as torchvision's does."""
    preset = get_preset(preset_name)
    generator = torch.Generator().manual_seed(7)
    reference = torch.stack([decode_sample(data, preset, generator) for data in photos])
    batch = decode_batch(photos, preset, torch.Generator().manual_seed(7), CPU)
    assert batch.shape == (12, 3, preset.crop_size, preset.crop_size) and batch.dtype == torch.float32
    assert torch.equal(batch, reference)


def test_jitter_and_flip_draws_really_vary_over_the_batch(photos):
    """The bit-for-bit test above means something only if samples take different branches."""
    preset = get_preset("imagenet_train")
    generator = torch.Generator().manual_seed(7)
    draws = [draw_sample(300, 400, preset, generator) for _ in photos]
    assert {draw.flip for draw in draws} == {True, False}
    assert len({draw.jitter_order for draw in draws}) >= 3
    assert all(0.6 <= factor <= 1.4 for draw in draws for factor in draw.jitter_factors)


def test_another_seed_gives_other_crops(photos):
    preset = get_preset("imagenet_train")
    first = augment_batch([decode_rgb(data) for data in photos], preset, torch.Generator().manual_seed(1))
    second = augment_batch([decode_rgb(data) for data in photos], preset, torch.Generator().manual_seed(2))
    assert not torch.equal(first, second)


def _exif_rotated(pixels: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_nvjpeg_takes_plain_jpegs_only(china):
    pixels = china[:64, :80]
    assert nvjpeg_decodable(encode_image(pixels))
    assert nvjpeg_decodable(encode_image(pixels[..., 0]))  # grayscale JPEG
    assert not nvjpeg_decodable(encode_image(pixels, "PNG"))
    assert not nvjpeg_decodable(_exif_rotated(pixels))
    cmyk = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(cmyk, format="JPEG")
    assert not nvjpeg_decodable(cmyk.getvalue())


def test_decode_images_on_the_cpu_is_pil_with_exif_applied(china):
    pixels = china[:64, :80]
    data = [encode_image(pixels, "PNG"), _exif_rotated(pixels)]
    images = decode_images(data, CPU)
    assert torch.equal(images[0], torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    assert images[1].shape == (3, 80, 64)  # shown upright: width and height swapped


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="unknown decode device 'tpu'"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device(None, 0) == torch.device("cuda", 0)
    else:
        assert resolve_device(None) is None  # no CUDA: per sample in the loader workers
        with pytest.raises(ValueError, match="decode device 'cuda' needs CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.py runs it there)")
def test_nvjpeg_decode_is_close_to_pil(photos):
    device = torch.device("cuda", 0)
    on_gpu = decode_images(photos, device)
    for data, image in zip(photos, on_gpu):
        assert image.device.type == "cuda"
        assert (image.cpu().float() - decode_rgb(data).float()).abs().mean() < 2.0
