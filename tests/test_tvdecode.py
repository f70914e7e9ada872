"""The torchvision/PIL decoder: torchvision's transforms, drawn from a given generator."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from conftest import encode_image
from lt_dist.data.presets import Preset, get_preset
from lt_dist.data.tvdecode import TorchvisionDecoder, decode_rgb, decode_sample, random_resized_crop_params




@pytest.fixture(scope="module")
def fmnist_png() -> bytes:
    """A Fashion-MNIST-like 28x28 grayscale PNG."""
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    return encode_image(pixels, "PNG")


def _unnormalize(images: torch.Tensor, preset: Preset) -> torch.Tensor:
    """(..., 3, H, W) normalised -> 0..1 units."""
    std = torch.tensor(preset.std).view(3, 1, 1)
    return images * std + torch.tensor(preset.mean).view(3, 1, 1)


def test_eval_equals_torchvision_transforms(china):
    data = encode_image(china, quality=95)
    preset = get_preset("imagenet_eval")
    reference = v2.Compose([
        v2.Resize(256, antialias=True), v2.CenterCrop(224),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(preset.mean, preset.std),
    ])(decode_rgb(data))
    out = decode_sample(data, preset, torch.Generator())
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out, reference)


def test_eval_is_close_to_pil(china):
    """torchvision's antialiased tensor resize approximates PIL's bilinear resize."""
    data = encode_image(china, quality=95)
    preset = get_preset("imagenet_eval")
    pil = Image.open(io.BytesIO(data)).convert("RGB").resize((383, 256), Image.BILINEAR)
    left, top = 80, 16  # torchvision's CenterCrop offsets for 383x256 -> 224
    pixels = torch.from_numpy(np.asarray(pil.crop((left, top, left + 224, top + 224))).copy())
    reference = v2.Normalize(preset.mean, preset.std)(pixels.permute(2, 0, 1).float() / 255)
    diff = (decode_sample(data, preset, torch.Generator()) - reference).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1


def test_crop_params_follow_torchvision_given_the_same_seed():
    preset = get_preset("imagenet_train")
    transform = v2.RandomResizedCrop(224, scale=preset.scale, ratio=preset.ratio)
    image = torch.zeros(3, 427, 640, dtype=torch.uint8)
    for seed in range(20):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            expected = transform.make_params([image])
        ours = random_resized_crop_params(427, 640, preset, torch.Generator().manual_seed(seed))
        assert ours == (expected["top"], expected["left"], expected["height"], expected["width"])


def test_crop_params_fallback_is_central():
    # An extreme aspect ratio and a large minimum area: every attempt fails.
    preset = get_preset("imagenet_train", scale=(0.99, 1.0), ratio=(1.0, 1.0))
    top, left, h, w = random_resized_crop_params(10, 200, preset, torch.Generator().manual_seed(0))
    assert (h, w) == (10, 10) and (top, left) == (0, 95)


def test_train_shapes_range_and_randomness(china):
    data = encode_image(china, quality=90)
    preset = get_preset("imagenet_train")
    generator = torch.Generator().manual_seed(0)
    outs = torch.stack([decode_sample(data, preset, generator) for _ in range(4)])
    assert outs.shape == (4, 3, 224, 224) and outs.dtype == torch.float32
    pixels = _unnormalize(outs, preset)
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
    assert not torch.equal(outs[0], outs[1])  # different crops
    again = decode_sample(data, preset, torch.Generator().manual_seed(0))
    assert torch.equal(again, outs[0])


def test_grayscale_png_becomes_three_equal_channels(fmnist_png):
    preset = get_preset("small_eval", size=28)
    out = decode_sample(fmnist_png, preset, torch.Generator())
    assert out.shape == (3, 28, 28)
    pixels = _unnormalize(out, preset)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2], atol=1e-5)
    # size 28 on a 28 px image: identity geometry
    original = torch.from_numpy(np.array(Image.open(io.BytesIO(fmnist_png)))).float() / 255
    assert torch.allclose(pixels[0], original, atol=1e-5)
    train = decode_sample(fmnist_png, get_preset("small_train", size=28), torch.Generator().manual_seed(1))
    assert train.shape == (3, 28, 28)


def test_lossless_formats_decode_exactly(china):
    expected = torch.from_numpy(china[:64, :80].copy()).permute(2, 0, 1)
    for fmt in ("BMP", "PNG"):
        assert torch.equal(decode_rgb(encode_image(china[:64, :80], fmt)), expected)


def test_exif_orientation_is_applied(china):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    data = encode_image(china[:64, :80], "PNG", exif=exif.tobytes())
    out = decode_rgb(data)
    assert out.shape == (3, 80, 64)
    assert torch.equal(out, torch.from_numpy(china[:64, :80].copy()).permute(2, 0, 1).rot90(-1, dims=(1, 2)))


def _samples(china: np.ndarray, count: int) -> list[tuple[bytes, int]]:
    """`count` distinct JPEGs (shifted crops of the photo), labelled 100, 101, ..."""
    return [(encode_image(china[i : i + 300, 2 * i : 2 * i + 400], quality=90), 100 + i) for i in range(count)]


def test_decoder_variable_last_batch_in_order(china):
    samples = _samples(china, 10)
    batches = [samples[0:4], samples[4:8], samples[8:10]]
    preset = get_preset("imagenet_eval")
    outs = list(TorchvisionDecoder(batches, preset, batch_size=4))
    assert [len(labels) for _, labels in outs] == [4, 4, 2]
    labels = torch.cat([labels for _, labels in outs])
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(100, 110))
    images = torch.cat([images for images, _ in outs])
    expected = torch.stack([decode_sample(data, preset, torch.Generator()) for data, _ in samples])
    assert torch.equal(images, expected)


def test_decoder_is_deterministic_given_seed(china):
    batches = [_samples(china, 3)] * 2
    preset = get_preset("imagenet_train")
    first = [images for images, _ in TorchvisionDecoder(batches, preset, 3, seed=7)]
    second = [images for images, _ in TorchvisionDecoder(batches, preset, 3, seed=7)]
    other = [images for images, _ in TorchvisionDecoder(batches, preset, 3, seed=8)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


def test_decoder_rejects_oversized_batches_and_gpu():
    preset = get_preset("small_eval")
    with pytest.raises(ValueError, match="batch of 3 samples exceeds batch_size 2"):
        next(TorchvisionDecoder([[(b"", 0)] * 3], preset, batch_size=2))
    with pytest.raises(ValueError, match="'cuda'"):
        TorchvisionDecoder([], preset, batch_size=2, device="cuda")
    assert list(TorchvisionDecoder([[], []], preset, batch_size=2)) == []
