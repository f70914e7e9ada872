"""Read one source image as the bytes that go into a shard, and check it decodes.

Files are stored as read (no re-encoding: no quality loss, no CPU spent) when both
training decoders (DALI, PIL) read them to the same picture: JPEG and 8-bit PNG.
Other formats, and IDX pixels, are stored as lossless 8-bit PNG. Checks:
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

import numpy as np
from PIL import Image, ImageOps

from lt_dist.shards.sources import Item

CHECKS = ("decode", "header", "none")


class BadImage(Exception):
    """An image that cannot be used; the message says why."""


def load_image(item: Item, check: str = "decode") -> tuple[bytes, str, int, int]:
    """Encoded bytes of one item, in a form both training decoders read alike.

    JPEG (L, RGB) and 8-bit PNG (L, LA, RGB, RGBA, P) are stored as read. Anything
    else that decodes (GIF, BMP, TIFF, WebP, PNM, 16-bit PNG/TIFF, CMYK JPEG, bilevel
    images, content whose name says another format) is stored as lossless 8-bit PNG
    of what it shows (EXIF orientation applied, 16-bit scaled by 255/65535): DALI
    cannot read some of these, and PIL turns 16-bit into all white. With check="none"
    the bytes are trusted and stored as read.

    Returns:
        (data, ext, width, height); width/height are 0 with check="none".
    Raises:
        BadImage when the file is missing, empty, does not decode or is a float image.
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
    image_format, mode, width, height = _check_decodes(data, item.path, full=check == "decode")
    if stored_as_read(image_format, mode, data):
        ext = ext if ext in EXTENSIONS[image_format] else EXTENSIONS[image_format][0]
        return data, ext, width, height
    return _convert_to_png(data, item.path)


# Formats and modes that DALI and PIL decode to the same RGB picture, stored as read.
STORED_AS_READ = {"JPEG": ("L", "RGB"), "PNG": ("L", "LA", "RGB", "RGBA", "P")}
EXTENSIONS = {"JPEG": ("jpg", "jpeg"), "PNG": ("png",)}
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def stored_as_read(image_format: str | None, mode: str, data: bytes) -> bool:
    """True for encoded images that DALI and PIL decode alike (STORED_AS_READ, 8-bit)."""
    if mode not in STORED_AS_READ.get(image_format, ()):
        return False
    return image_format != "PNG" or _png_bit_depth(data) <= 8


def _png_bit_depth(data: bytes) -> int:
    """Bits per channel from a PNG's IHDR (byte 24: after the signature, length, type, size)."""
    return data[24] if len(data) > 24 else 8


def _convert_to_png(data: bytes, name: str) -> tuple[bytes, str, int, int]:
    """Lossless 8-bit PNG of what an image shows; BadImage for float pixels."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)  # the stored PNG carries no EXIF: bake it in
            if image.mode == "F":
                raise BadImage(f"{name} has 32-bit float pixels ({image.format}); convert it to 8 bits per channel")
            if image.mode in _SIXTEEN_BIT:
                wide = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.clip(np.round(wide * (255 / 65535)), 0, 255).astype(np.uint8))
            elif image.mode not in ("L", "LA", "RGB", "RGBA"):
                alpha = "A" in image.getbands() or "transparency" in image.info
                image = image.convert("RGBA" if alpha else ("L" if image.mode == "1" else "RGB"))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=6)
    except BadImage:
        raise
    except Exception as error:  # PIL raises many types for broken data
        raise BadImage(f"cannot convert {name} to PNG: {type(error).__name__}: {error}") from None
    return buffer.getvalue(), "png", image.width, image.height


def _encode_png(item: Item) -> tuple[bytes, str, int, int]:
    buffer = io.BytesIO()
    image = Image.fromarray(item.pixels)
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue(), "png", image.width, image.height


def _check_decodes(data: bytes, name: str, full: bool) -> tuple[str, str, int, int]:
    """(format, mode, width, height) of an encoded image; BadImage if it does not open/decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image_format, mode, (width, height) = image.format, image.mode, image.size
            if full:
                if image.format == "JPEG":
                    image.draft(image.mode, (max(width // 8, 1), max(height // 8, 1)))
                image.load()
    except Exception as error:  # PIL raises many types for broken data
        raise BadImage(f"cannot decode {name}: {type(error).__name__}: {error}") from None
    return image_format, mode, width, height


def decode_image(data: bytes) -> Image.Image:
    """Fully decode encoded image bytes (used by verify --decode)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
