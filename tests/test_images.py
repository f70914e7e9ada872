"""What pack stores for each image format and mode, and that both training decoders
(torchvision/PIL and DALI) decode the stored bytes to the same, right picture."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from lt_dist.data.tvdecode import decode_rgb
from lt_dist.shards.images import BadImage, load_image
from lt_dist.shards.sources import Item

SIZE = 28
RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
ALPHA = RNG.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
PALETTE = np.array([[255, 0, 0], [0, 128, 255], [20, 200, 40], [250, 250, 250]], dtype=np.uint8)
INDEX = RNG.integers(0, 4, (SIZE, SIZE), dtype=np.uint8)
BITS = RNG.integers(0, 2, (SIZE, SIZE), dtype=bool)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def paletted() -> Image.Image:
    image = Image.fromarray(INDEX, mode="L").convert("P")
    image.putpalette(PALETTE.flatten().tolist() + [0] * (768 - PALETTE.size))
    return image


def gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


# name -> (file name, bytes, expected RGB (H, W, 3) computed from the source arrays, stored ext)
CASES = {
    "png L": ("a.png", lambda: encoded(Image.fromarray(GRAY), "PNG"), gray3(GRAY), "png"),
    "png RGB": ("a.png", lambda: encoded(Image.fromarray(RGB), "PNG"), RGB, "png"),
    "png RGBA": ("a.png", lambda: encoded(Image.fromarray(np.dstack([RGB, ALPHA])), "PNG"), RGB, "png"),
    "png LA": ("a.png", lambda: encoded(Image.fromarray(np.dstack([GRAY, ALPHA]), mode="LA"), "PNG"),
               gray3(GRAY), "png"),
    "png P": ("a.png", lambda: encoded(paletted(), "PNG"), PALETTE[INDEX], "png"),
    "png 16-bit": ("a.png", lambda: encoded(Image.fromarray(GRAY16), "PNG"),
                   gray3(np.round(GRAY16 * (255 / 65535)).astype(np.uint8)), "png"),
    "tiff 16-bit": ("a.tif", lambda: encoded(Image.fromarray(GRAY16), "TIFF"),
                    gray3(np.round(GRAY16 * (255 / 65535)).astype(np.uint8)), "png"),
    "png bilevel": ("a.png", lambda: encoded(Image.fromarray(BITS), "PNG"),
                    gray3(BITS.astype(np.uint8) * 255), "png"),
    "gif named jpg": ("a.jpg", lambda: encoded(paletted(), "GIF"), PALETTE[INDEX], "png"),
    "bmp": ("a.bmp", lambda: encoded(Image.fromarray(RGB), "BMP"), RGB, "png"),
    "tiff RGB": ("a.tiff", lambda: encoded(Image.fromarray(RGB), "TIFF"), RGB, "png"),
    "webp lossless": ("a.webp", lambda: encoded(Image.fromarray(RGB), "WEBP", lossless=True), RGB, "png"),
    "ppm": ("a.ppm", lambda: encoded(Image.fromarray(RGB), "PPM"), RGB, "png"),
    "png named jpg": ("a.jpg", lambda: encoded(Image.fromarray(RGB), "PNG"), RGB, "png"),
}


def stored(tmp_path: Path, name: str) -> tuple[bytes, str]:
    file_name, make, _, _ = CASES[name]
    path = tmp_path / file_name
    path.write_bytes(make())
    data, ext, width, height = load_image(Item(file_name, 0, str(path), origin=str(path)))
    assert (width, height) == (SIZE, SIZE)
    return data, ext


@pytest.mark.parametrize("name", CASES)
def test_torchvision_decodes_what_pack_stores_to_the_right_picture(name, tmp_path):
    data, ext = stored(tmp_path, name)
    assert ext == CASES[name][3]
    picture = decode_rgb(data).permute(1, 2, 0).numpy()
    assert np.array_equal(picture, CASES[name][2])


@pytest.mark.parametrize("name", CASES)
def test_dali_decodes_what_pack_stores_to_the_same_picture(name, tmp_path):
    pytest.importorskip("nvidia.dali")
    from lt_dist.data.dali import DaliDecoder
    from lt_dist.data.presets import get_preset

    data, _ = stored(tmp_path, name)
    preset = get_preset("small_eval", size=SIZE)  # resize to its own size + centre crop: identity
    images, _ = next(DaliDecoder([[(data, 0)]], preset, batch_size=1, device="cpu"))
    units = images[0] * torch.tensor(preset.std).view(3, 1, 1) + torch.tensor(preset.mean).view(3, 1, 1)
    picture = torch.round(units * 255).permute(1, 2, 0).numpy()
    assert np.array_equal(picture, CASES[name][2].astype(np.float32))


def test_jpeg_is_stored_as_read(tmp_path):
    path = tmp_path / "photo.jpeg"
    path.write_bytes(encoded(Image.fromarray(RGB), "JPEG", quality=90))
    data, ext, _, _ = load_image(Item("photo.jpeg", 0, str(path), origin=str(path)))
    assert data == path.read_bytes() and ext == "jpeg"


def test_float_image_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "depth.tif"
    path.write_bytes(encoded(Image.fromarray(RNG.random((SIZE, SIZE)).astype(np.float32)), "TIFF"))
    with pytest.raises(BadImage, match="depth.tif has 32-bit float pixels"):
        load_image(Item("depth.tif", 0, str(path), origin=str(path)))


def test_gif_named_jpg_packs_and_reads_back_as_png(tmp_path, capsys):
    """End to end: the GIF that used to pass pack and crash DALI is stored as PNG."""
    for label in range(2):
        (tmp_path / "images" / f"c{label}").mkdir(parents=True)
        (tmp_path / "images" / f"c{label}" / "x.jpg").write_bytes(encoded(paletted(), "GIF"))
    status, _, err = run_cli(["pack", tmp_path / "images", "--out", tmp_path / "out", "--no-progress"], capsys)
    assert status == 0, err
    from lt_dist.data.reader import ShardReader

    reader = ShardReader(str(tmp_path / "out" / "train"))
    assert reader.read(0)[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_rgb(reader.read(1)).permute(1, 2, 0).numpy(), PALETTE[INDEX])
