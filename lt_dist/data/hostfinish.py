"""Second stage of the DALI decoder's CPU path: resize, colour twist, flip, normalise in torch.

    # DALI (dali.build_host_pipeline): uint8 HWC image to resize + per-sample random draws
    # -> HostFinish: torchvision resize -> [center crop] -> [colour twist] -> [flip] -> normalise
    # -> float32 (N, 3, crop, crop)

Why not in DALI: its CPU operators after the decoder are slow. On a 2-core EPYC, one
thread, 500x375 JPEGs: DALI's antialiased linear resize to 224x224 about 1.6 ms per
image, torchvision's uint8 (AVX2) resize about 0.13 ms, the decode 0.5 ms in either;
DALI's CPU colour twist about 1.4 ms on a crop, the same 3x3 matrix here about 0.05 ms;
DALI's CPU flip 60 us on a crop, a flip of the 224 px result 10 us (DALI's maintainers
call their CPU resize "not optimized very much": NVIDIA/DALI#4581). The random draws
(crop window, coin, jitter factors) stay in DALI, so the output is still fixed by the
pipeline's seed and the input order, and the order of operations is the GPU graph's.

Imports torch and torchvision only: testable without DALI.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lt_dist.data.presets import Preset

# DALI's colour twist (dali/operators/image/color/color_twist.h): in YIQ space,
# saturation scales I and Q; then x -> brightness * (contrast * x + 128 * (1 - contrast)).
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
_YIQ2RGB = torch.tensor([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])
JITTER_DRAWS = ("brightness", "contrast", "saturation")  # DALI outputs, in this order


def extra_outputs(preset: Preset) -> list[str]:
    """Names of the per-sample random draws the DALI stage outputs after (images, labels)."""
    flip = ["coin"] if preset.train and preset.flip else []
    return flip + (list(JITTER_DRAWS) if preset.train and preset.color_jitter > 0 else [])


class BatchPool:
    """Float output batches of one shape, handed out again once nothing refers to them.

    A float32 batch of 64 x 3 x 224 x 224 is 38.5 MB, above glibc's largest mmap
    threshold (32 MiB): each fresh one is a new mapping whose 9,400 pages fault on
    first write, about 0.2 ms per image on the 2-core VM where this was measured (a
    third of the decode time). A buffer is reused only when its storage's use count
    is back to its value at allocation, i.e. no tensor refers to it any more: not the
    batch handed out, nor a slice or view of it, nor autograd's saved input, nor a
    numpy array over it (torch's CUDA graph trees test output liveness with the same
    count). Held outputs therefore stay valid; a caller that keeps every batch simply
    gets fresh memory each time.
    """

    def __init__(self, shape: tuple[int, ...], capacity: int = 4):
        self.shape, self.capacity = shape, capacity
        self._buffers: list[tuple[torch.Tensor, int]] = []  # (buffer, use count when idle)

    def take(self, rows: int) -> torch.Tensor:
        """A (rows, ...) float32 tensor, possibly still holding an earlier batch's values."""
        for buffer, idle in self._buffers:
            if _storage_uses(buffer) == idle:
                return buffer[:rows]
        buffer = torch.empty(self.shape, dtype=torch.float32)
        idle = _storage_uses(buffer)
        if idle is not None and len(self._buffers) < self.capacity:
            self._buffers.append((buffer, idle))
        return buffer[:rows]


def _storage_uses(tensor: torch.Tensor) -> int | None:
    """References to the tensor's storage (None where torch lacks the private counter)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(tensor.untyped_storage()._cdata)


def twist_matrix(brightness: float, contrast: float, saturation: float) -> tuple[torch.Tensor, float]:
    """(3x3 matrix, offset) of DALI's colour twist: rgb -> matrix @ rgb + offset."""
    matrix = _YIQ2RGB @ torch.diag(torch.tensor([1.0, saturation, saturation])) @ _RGB2YIQ
    return brightness * contrast * matrix, 128.0 * (1.0 - contrast) * brightness


class HostFinish:
    """DALI's uint8 HWC images + draws -> float32 (N, 3, crop, crop), normalised.

    Same geometry and filter as tvdecode: train resizes the crop window to
    crop_size x crop_size; eval resizes the short side to resize_size (long side
    int(resize_size * long / short)) and takes the center crop; both antialiased
    bilinear. The colour twist rounds and clamps to 0..255 as DALI's uint8 output
    does. The torch ops run on one intra-op thread, restored afterwards: the DALI
    threads already fill the cores, and OpenMP regions over single images only add
    waiting (measured: the CPU path about 30% slower with torch's 2 threads).
    """

    def __init__(self, preset: Preset, batch_size: int):
        std = torch.tensor(preset.std, dtype=torch.float32) * 255
        self.scale = (1 / std).view(3, 1, 1)  # (x - 255 mean) / (255 std) = x * scale + shift
        self.shift = (-torch.tensor(preset.mean, dtype=torch.float32) * 255 / std).view(3, 1, 1)
        self.preset, self.names = preset, extra_outputs(preset)
        size = preset.crop_size
        self.pool = BatchPool((batch_size, 3, size, size))
        self._pixels = torch.empty(3, size * size) if preset.color_jitter > 0 else None  # twist input

    def __call__(self, images: Sequence, draws: Sequence[np.ndarray]) -> torch.Tensor:
        """images: N uint8 (h, w, 3) arrays (or DALI tensors); draws: extra_outputs' arrays."""
        from torchvision.transforms.v2 import functional as F

        named = dict(zip(self.names, draws, strict=True))
        coins, preset = named.get("coin"), self.preset
        size = [preset.crop_size] * 2
        out = self.pool.take(len(images))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for index in range(len(images)):
                # (1, 3, h, w) view of the HWC buffer, no copy: channels-last, the layout
                # torch's uint8 resize is fastest on.
                image = torch.from_numpy(np.asarray(images[index])).permute(2, 0, 1).unsqueeze(0)
                if preset.train:
                    image = F.resize(image, size, antialias=True)
                else:
                    image = F.center_crop(F.resize(image, [preset.resize_size], antialias=True), size)
                if coins is not None and coins[index]:
                    image = image.flip(-1)
                target = out[index]
                if self._pixels is None:
                    target.copy_(image[0])  # uint8 channels-last -> float32 CHW
                else:
                    self._twist(image[0], target, *(float(named[n][index]) for n in JITTER_DRAWS))
                target.mul_(self.scale).add_(self.shift)
        finally:
            torch.set_num_threads(threads)
        return out

    def _twist(self, image: torch.Tensor, target: torch.Tensor, brightness: float, contrast: float,
               saturation: float) -> None:
        """target (3, s, s) float <- DALI's colour twist of the uint8 image, rounded, clamped."""
        matrix, offset = twist_matrix(brightness, contrast, saturation)
        self._pixels.view(target.shape).copy_(image)
        flat = target.view(3, -1)
        torch.addmm(torch.full((3, 1), offset), matrix, self._pixels, out=flat)
        flat.round_().clamp_(0, 255)
