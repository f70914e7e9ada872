"""Shared fixtures: tiny real datasets built in tmp_path, and the shared split lists."""
from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LT_SHARED", REPO.parent / "shared"))
SPLITS = SHARED / "data" / "lt-splits"
# Tests on the real benchmark split lists (ImageNet-LT / Places-LT counts) need that folder;
# CI has it beside the repository. Elsewhere they are skipped, saying where they looked.
needs_splits = pytest.mark.skipif(not SPLITS.is_dir(), reason=f"the benchmark split lists are not in {SPLITS} "
                                  f"(set LT_SHARED to the folder that holds data/lt-splits)")


def jpeg_bytes(rng: np.random.Generator, width: int = 40, height: int = 30, quality: int = 90) -> bytes:
    """A real JPEG: smooth gradient plus noise (decodes like a photo, costs little)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                     np.full_like(xx, int(rng.integers(0, 256)))], axis=-1)
    pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_image(pixels: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    """Encoded bytes of a uint8 (H, W[, 3]) array."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def china() -> np.ndarray:
    """scikit-learn's sample photograph, uint8 (427, 640, 3)."""
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[0]


def make_image_folder(root: Path, counts: list[int], seed: int = 0, size=(40, 30)) -> Path:
    """ROOT/class_XX/img_YYYY.jpg with counts[j] images in class j."""
    rng = np.random.default_rng(seed)
    for label, count in enumerate(counts):
        class_dir = root / f"class_{label:02d}"
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (class_dir / f"img_{index:04d}.jpg").write_bytes(jpeg_bytes(rng, *size))
    return root


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    """Write one split's IDX image and label files (MNIST layout)."""
    def header(magic: int, shape) -> bytes:
        return magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in shape)

    files = {f"{prefix}-images-idx3-ubyte": header(0x803, images.shape) + images.astype(np.uint8).tobytes(),
             f"{prefix}-labels-idx1-ubyte": header(0x801, labels.shape) + labels.astype(np.uint8).tobytes()}
    for name, data in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """5 classes with 12, 8, 5, 3, 2 tiny JPEGs."""
    return make_image_folder(tmp_path / "images", [12, 8, 5, 3, 2])


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    """A balanced MNIST-like source: 4 classes, 30 train and 5 test images each, 8x8."""
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for prefix, per_class, gz in (("train", 30, True), ("t10k", 5, False)):
        labels = np.repeat(np.arange(4), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, (len(labels), 8, 8)).astype(np.uint8)
        write_idx(folder, prefix, images, labels, gz)
    return folder


def free_port() -> int:
    """A TCP port nobody listens on now (bind to port 0 and let the kernel choose)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `lt_dist ARGS` in-process; returns (status, stdout, stderr)."""
    from lt_dist.cli import main

    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def sigkill_when(process: subprocess.Popen, ready: Callable[[], bool], poll_s: float,
                 message: str, timeout_s: float = 300, group: bool = False) -> None:
    """Poll ready() while process runs; SIGKILL it (its whole session with group=True,
    for launchers started with start_new_session) the moment ready() holds, then reap it.
    Fails with `message` when the process ended by itself first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        if ready():
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.send_signal(signal.SIGKILL)
            break
        time.sleep(poll_s)
    process.wait()
    assert process.returncode == -signal.SIGKILL, message
