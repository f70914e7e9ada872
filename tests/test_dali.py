"""The DALI decoder on the CPU: agreement with torchvision, batching, determinism."""
from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from conftest import encode_image  # noqa: E402
from lt_dist.data.dali import DaliDecoder, resolve_device  # noqa: E402
from lt_dist.data.presets import Preset, get_preset  # noqa: E402
from lt_dist.data.tvdecode import decode_sample  # noqa: E402




def _decode_one(data: bytes, preset: Preset, **options) -> torch.Tensor:
    """DALI output (3, H, W) for one image in a batch of one."""
    images, labels = next(DaliDecoder([[(data, 0)]], preset, batch_size=1, device="cpu", **options))
    assert labels.tolist() == [0]
    return images[0]


def _tv(data: bytes, preset: Preset) -> torch.Tensor:
    """torchvision's eval output (3, H, W)."""
    return decode_sample(data, preset, torch.Generator())


def _unnormalize(images: torch.Tensor, preset: Preset) -> torch.Tensor:
    """(..., 3, H, W) normalised -> 0..1 units."""
    return images * torch.tensor(preset.std).view(3, 1, 1) + torch.tensor(preset.mean).view(3, 1, 1)


def test_eval_matches_torchvision_on_a_photo(china):
    """Seen: max 0.0175 (one grey level / std), mean 0.0024: same JPEG decoder, same geometry."""
    data = encode_image(china, quality=95)
    preset = get_preset("imagenet_eval")
    ours = _decode_one(data, preset)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    diff = (ours - _tv(data, preset)).abs()
    print(f"DALI vs torchvision eval, china.jpg 427x640: max {diff.max():.4f} mean {diff.mean():.5f}")
    assert diff.mean() < 0.01 and diff.max() < 0.05


@pytest.mark.parametrize("height, width", [(256, 385), (256, 383), (385, 256), (640, 427), (300, 300)])
def test_eval_geometry_matches_torchvision(china, height, width):
    """Sizes where DALI's own rounding (resize_shorter, crop_pos) would differ by a pixel."""
    pixels = np.asarray(Image.fromarray(china).resize((width, height), Image.BILINEAR))
    data = encode_image(pixels, "PNG")
    preset = get_preset("imagenet_eval")
    diff = (_decode_one(data, preset) - _tv(data, preset)).abs()
    assert diff.mean() < 0.005 and diff.max() < 0.05


def test_exif_orientation_matches_torchvision(china):
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode_image(china, quality=95, exif=exif.tobytes())
    preset = get_preset("imagenet_eval", crop_size=200)
    diff = (_decode_one(data, preset) - _tv(data, preset)).abs()
    assert diff.mean() < 0.01


def test_grayscale_png_small_eval_is_identity():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    data = encode_image(pixels, "PNG")
    preset = get_preset("small_eval", size=28)
    out = _unnormalize(_decode_one(data, preset), preset)
    expected = torch.from_numpy(pixels).float().div(255).expand(3, 28, 28)
    assert out.shape == (3, 28, 28) and torch.allclose(out, expected, atol=1e-5)
    train = _decode_one(data, get_preset("small_train", size=28))
    assert train.shape == (3, 28, 28)


def test_train_shapes_dtypes_and_range(china):
    data = encode_image(china, quality=90)
    preset = get_preset("imagenet_train")
    images, labels = next(DaliDecoder([[(data, 5)] * 4], preset, batch_size=4, device="cpu"))
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [5] * 4
    pixels = _unnormalize(images, preset)
    assert pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4
    assert 0.1 < pixels.mean() < 0.9 and pixels.std() > 0.05  # a photo, not a constant
    assert not torch.equal(images[0], images[1])  # each sample its own crop


def test_train_flip_is_a_coin(china):
    """Full-image crop (scale 1, the image's own ratio), no jitter: output is the image or its mirror."""
    data = encode_image(china[:256, :256], "PNG")
    preset = Preset(name="flip", train=True, crop_size=256, resize_size=256,
                    scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    images, _ = next(DaliDecoder([[(data, 0)] * 16], preset, batch_size=16, device="cpu"))
    upright = _tv(data, Preset(name="eval", train=False, crop_size=256, resize_size=256))
    same = [torch.allclose(image, upright, atol=1e-5) for image in images]
    mirrored = [torch.allclose(image, upright.flip(-1), atol=1e-5) for image in images]
    assert all(a or b for a, b in zip(same, mirrored))
    assert any(same) and any(mirrored)


def _samples(china: np.ndarray, count: int) -> list[tuple[bytes, int]]:
    """`count` distinct JPEGs (shifted crops of the photo), labelled 100, 101, ..."""
    return [(encode_image(china[i : i + 300, 2 * i : 2 * i + 400], quality=90), 100 + i) for i in range(count)]


def test_variable_last_batch_nothing_dropped_or_repeated(china):
    samples = _samples(china, 10)
    batches = [samples[0:4], samples[4:8], samples[8:10]]
    preset = get_preset("imagenet_eval")
    outs = list(DaliDecoder(iter(batches), preset, batch_size=4, device="cpu"))
    assert [tuple(images.shape) for images, _ in outs] == [(4, 3, 224, 224)] * 2 + [(2, 3, 224, 224)]
    labels = torch.cat([labels for _, labels in outs])
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(100, 110))
    # Held outputs stay valid after later batches (no buffer reuse) and are in order.
    images = torch.cat([images for images, _ in outs])
    expected = torch.stack([_tv(data, preset) for data, _ in samples])
    assert (images - expected).abs().max() < 0.05


def test_deterministic_given_seed(china):
    batches = [_samples(china, 3), _samples(china, 3)[:2]]
    preset = get_preset("imagenet_train")

    def run(seed: int, threads: int) -> list[torch.Tensor]:
        decoder = DaliDecoder(batches, preset, 3, num_threads=threads, seed=seed, device="cpu")
        return [images for images, _ in decoder]

    first, second, other = run(7, 2), run(7, 1), run(8, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # thread count does not matter
    assert not torch.equal(first[0], other[0])


def test_empty_input_and_empty_batches(china):
    preset = get_preset("small_eval")
    assert list(DaliDecoder([], preset, batch_size=2, device="cpu")) == []
    sample = _samples(china, 1)
    outs = list(DaliDecoder([[], sample, []], preset, batch_size=2, device="cpu"))
    assert len(outs) == 1 and outs[0][1].tolist() == [100]


def test_bad_arguments_raise():
    preset = get_preset("small_eval")
    with pytest.raises(ValueError, match="batch of 3 samples exceeds batch_size 2"):
        list(DaliDecoder([[(b"", 0)] * 3], preset, batch_size=2, device="cpu"))
    with pytest.raises(ValueError, match="unknown DALI decode device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device(None) == ("mixed" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            DaliDecoder([], preset, batch_size=2, device="mixed")


def test_only_the_dali_module_imports_dali():
    root = pathlib.Path(__file__).resolve().parents[1] / "lt_dist"
    statement = re.compile(r"^\s*(import|from)\s+nvidia\.dali", re.MULTILINE)
    importers = sorted(
        str(path.relative_to(root)) for path in root.rglob("*.py") if statement.search(path.read_text())
    )
    assert importers == ["data/dali.py"]
