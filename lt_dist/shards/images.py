"""Read one source image as the bytes that go into a shard, and check it decodes.

Files are stored as read (no re-encoding: no quality loss, no CPU spent); IDX
pixels are encoded as lossless PNG. Checks:
    decode  decode every pixel (JPEG through PIL's DCT-domain draft mode at 1/8
            scale, which still walks all entropy-coded data, so truncation and
            corrupt streams are caught at a fraction of a full decode's cost)
    header  open the image and read its header only
    none    trust the bytes
"""
from __future__ import annotations

import io
import os
import warnings

from PIL import Image

from lt_dist.shards.sources import Item

CHECKS = ("decode", "header", "none")


class BadImage(Exception):
    """An image that cannot be used; the message says why."""


def load_image(item: Item, check: str = "decode") -> tuple[bytes, str, int, int]:
    """Encoded bytes of one item.

    Returns:
        (data, ext, width, height); width/height are 0 with check="none".
    Raises:
        BadImage when the file is missing, empty or does not decode.
    """
    if item.pixels is not None:
        return _encode_png(item)
    try:
        with open(item.path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise BadImage(f"cannot read {item.path}: {error.strerror or error}") from None
    if not data:
        raise BadImage(f"empty file {item.path}")
    ext = os.path.splitext(item.path)[1].lower().lstrip(".") or "jpg"
    if check == "none":
        return data, ext, 0, 0
    width, height = _check_decodes(data, item.path, full=check == "decode")
    return data, ext, width, height


def _encode_png(item: Item) -> tuple[bytes, str, int, int]:
    buffer = io.BytesIO()
    image = Image.fromarray(item.pixels)
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue(), "png", image.width, image.height


def _check_decodes(data: bytes, name: str, full: bool) -> tuple[int, int]:
    """(width, height) of an encoded image; BadImage if it does not open/decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if full:
                if image.format == "JPEG":
                    image.draft(image.mode, (max(width // 8, 1), max(height // 8, 1)))
                image.load()
    except Exception as error:  # PIL raises many types for broken data
        raise BadImage(f"cannot decode {name}: {type(error).__name__}: {error}") from None
    return width, height


def decode_image(data: bytes) -> Image.Image:
    """Fully decode encoded image bytes (used by verify --decode)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
