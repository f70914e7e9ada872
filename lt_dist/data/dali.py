"""Decode + augment with NVIDIA DALI: encoded bytes in, normalised tensors out.

The only module in lt_dist that imports nvidia.dali; it does so inside functions, so
importing this module costs nothing and works where DALI is not installed.

The pipeline is fed by fn.external_source from a Python generator (pull mode):
    # batches -> list[(bytes, int)], at most batch_size long
    # -> external_source -> (encoded uint8 1-D per sample, label int64 scalar)
DALI accepts batches smaller than the pipeline's batch_size, so the last, short
batch comes out as it went in: no padding, nothing dropped or repeated.

Two graphs, one per decode device:
    "mixed" (a GPU, nvJPEG): everything in DALI (build_pipeline), read back with
        DALIGenericIterator(size=-1), which runs until the generator is exhausted:
        decode (+random crop) -> resize -> [colour twist] -> crop/mirror/normalise
    "cpu": DALI decodes and draws the random numbers (build_host_pipeline), torch
        does the rest in the same order (hostfinish.HostFinish, which says why:
        DALI's CPU resize alone costs three times the decode).

Decoding is "mixed" when torch sees CUDA, else "cpu" with device_id=None. The
choice is made up front: DALI raises at build time for a GPU pipeline without
CUDA, and catching that would hide real misconfiguration.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from lt_dist.data.hostfinish import JITTER_DRAWS, HostFinish
from lt_dist.data.presets import Preset

DEVICES = ("cpu", "mixed")


def resolve_device(device: str | None) -> str:
    """The decoder backend: "mixed" if CUDA is available, else "cpu"; or check an explicit one."""
    cuda = torch.cuda.is_available()
    if device is None:
        return "mixed" if cuda else "cpu"
    if device not in DEVICES:
        raise ValueError(f"unknown DALI decode device {device!r}; accepted: None (auto), {', '.join(DEVICES)}")
    if device == "mixed" and not cuda:
        raise ValueError("device 'mixed' needs a CUDA GPU, and torch.cuda.is_available() is False; use 'cpu'")
    return device


def _feed(batches: Iterable[list[tuple[bytes, int]]], batch_size: int) -> Iterator[tuple[list, list]]:
    """(encoded images, labels) per batch in external_source's batch format.

    Yields ([uint8 (nbytes,) per sample], [int64 () per sample]); empty input
    batches are skipped (they carry no samples; DALI would run a zero-sample iteration).
    """
    for batch in batches:
        if not batch:
            continue
        if len(batch) > batch_size:
            raise ValueError(f"a batch of {len(batch)} samples exceeds batch_size {batch_size}")
        # np.frombuffer does not copy; DALI copies the bytes when the batch is fed.
        encoded = [np.frombuffer(data, dtype=np.uint8) for data, _ in batch]
        labels = [np.array(label, dtype=np.int64) for _, label in batch]
        yield encoded, labels


def _train_graph(encoded: Any, preset: Preset, device: str) -> tuple[Any, dict[str, Any]]:
    """DALI graph: encoded bytes -> (uint8 HWC (crop_size, crop_size, 3) randomly augmented, {}).

    The random flip is left to crop_mirror_normalize; there is no further crop.
    """
    from nvidia.dali import fn, types

    images = _random_crop_decode(encoded, preset, device)
    images = fn.resize(
        images,
        resize_x=preset.crop_size,
        resize_y=preset.crop_size,
        interp_type=types.INTERP_LINEAR,
        antialias=True,  # torchvision's antialias=True: downscaling filters over the footprint
    )
    if preset.color_jitter > 0:
        images = _color_twist(images, preset)
    return images, {}


def _random_crop_decode(encoded: Any, preset: Preset, device: str) -> Any:
    """DALI node: the RandomResizedCrop window of each image, decoded alone (uint8 HWC)."""
    from nvidia.dali import fn, types

    # Decodes only the crop window where the format allows (JPEG ROI decoding).
    return fn.decoders.image_random_crop(
        encoded,
        device=device,
        output_type=types.RGB,
        random_area=list(preset.scale),
        random_aspect_ratio=list(preset.ratio),
        num_attempts=10,  # torchvision's RandomResizedCrop also tries 10 times
    )


def _color_twist(images: Any, preset: Preset) -> Any:
    """DALI node: brightness, contrast, saturation factors uniform in [1 - j, 1 + j].

    One fixed order (DALI's colour twist), unlike torchvision's random order;
    DALI's contrast pivots on mid-grey, torchvision's on the image's mean grey.
    """
    from nvidia.dali import fn

    jitter = [1.0 - preset.color_jitter, 1.0 + preset.color_jitter]
    return fn.color_twist(
        images,
        brightness=fn.random.uniform(range=jitter),
        contrast=fn.random.uniform(range=jitter),
        saturation=fn.random.uniform(range=jitter),
    )


def _host_graph(encoded: Any, preset: Preset) -> tuple[Any, list[Any]]:
    """DALI graph of the CPU path: encoded bytes -> (uint8 HWC image to resize, per-sample draws).

    Train: the crop window, decoded alone, and the draws hostfinish.extra_outputs
    names (flip coin, jitter factors), which HostFinish applies; eval: the whole image.
    """
    from nvidia.dali import fn, types

    if not preset.train:
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB), []
    draws = [fn.random.coin_flip(probability=0.5)] if preset.flip else []
    if preset.color_jitter > 0:
        jitter = [1.0 - preset.color_jitter, 1.0 + preset.color_jitter]
        draws += [fn.random.uniform(range=jitter) for _ in JITTER_DRAWS]
    return _random_crop_decode(encoded, preset, "cpu"), draws  # in extra_outputs(preset) order


def _eval_graph(encoded: Any, preset: Preset, device: str) -> tuple[Any, dict[str, Any]]:
    """DALI graph: encoded bytes -> (uint8 HWC resized, center-crop arguments).

    The crop itself is left to crop_mirror_normalize (one pass over the pixels).

    The geometry is torchvision's to the pixel, so both decoders give the same
    eval tensors: short side -> resize_size, long side -> int(resize_size * long /
    short) (DALI's resize_shorter rounds it instead, e.g. 383.7 -> 384 rather than
    383, which shifts the crop by a fraction of a pixel: 0.09 mean abs difference
    on a photo), and the center crop's offset rounds half to even like Python's
    round(), not half away from zero like DALI's crop_pos.
    """
    from nvidia.dali import fn, math, types

    images = fn.decoders.image(encoded, device=device, output_type=types.RGB)
    # From the encoded header (CPU, EXIF-rotated like the decoder): no GPU -> CPU edge.
    shape = fn.peek_image_shape(encoded)  # int64 (H, W, C) per sample
    height, width = shape[0], shape[1]
    short = math.min(height, width)
    out_h = preset.resize_size * height // short
    out_w = preset.resize_size * width // short
    images = fn.resize(
        images,
        resize_y=fn.cast(out_h, dtype=types.FLOAT),
        resize_x=fn.cast(out_w, dtype=types.FLOAT),
        interp_type=types.INTERP_LINEAR,
        antialias=True,  # as torchvision's antialias=True / PIL: filter over the footprint
    )
    crop = preset.crop_size
    window = {
        "crop": (crop, crop),
        "crop_pos_y": _center_pos(out_h - crop),
        "crop_pos_x": _center_pos(out_w - crop),
    }
    return images, window


def _center_pos(slack: Any) -> Any:
    """DALI float node: normalised crop position giving offset round_half_even(slack / 2).

    crop_pos * slack is then an integer up to float error, which DALI's default
    rounding="round" maps back to exactly that offset.
    """
    from nvidia.dali import fn, math, types

    half = slack // 2
    offset = half + (slack - 2 * half) * (half - 2 * (half // 2))  # +1 only for odd slack and odd half
    return fn.cast(offset, dtype=types.FLOAT) / fn.cast(math.max(slack, 1), dtype=types.FLOAT)


def _normalize_graph(images: Any, preset: Preset, window: dict[str, Any]) -> Any:
    """DALI graph: uint8 HWC -> float32 CHW (3, crop, crop), (x - 255 mean) / (255 std).

    `window` holds crop_mirror_normalize's crop arguments (eval) or nothing (train,
    already crop-sized); the random horizontal flip (train with flip) happens here.
    """
    from nvidia.dali import fn, types

    mirror = fn.random.coin_flip(probability=0.5) if preset.train and preset.flip else 0
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in preset.mean],
        std=[255.0 * s for s in preset.std],
        mirror=mirror,
        **window,
    )


def _inputs(source: Iterator[tuple[list, list]]) -> tuple[Any, Any]:
    """DALI nodes (encoded uint8 1-D, label int64 scalar) fed from `source` (see _feed)."""
    from nvidia.dali import fn, types

    return fn.external_source(source=source, num_outputs=2, batch=True,
                              dtype=[types.UINT8, types.INT64], ndim=[1, 0])


def _new_pipeline(batch_size: int, num_threads: int, device_id: int | None, seed: int, prefetch: int) -> Any:
    """An empty DALI Pipeline with the settings both graphs share."""
    from nvidia.dali import Pipeline

    return Pipeline(
        batch_size=batch_size,  # the maximum; smaller batches pass through as they are
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,  # every random op's seed derives from it: same seed, same stream
        prefetch_queue_depth=prefetch,
    )


def build_pipeline(
    source: Iterator[tuple[list, list]],
    preset: Preset,
    batch_size: int,
    num_threads: int,
    seed: int,
    prefetch: int,
    device: str,
) -> Any:
    """A built DALI Pipeline with outputs (images float CHW, labels int64 scalars).

    `source` yields external_source batches (see _feed). With device "mixed" both
    outputs are on the GPU (torch's current device), else on the CPU.
    """
    device_id = torch.cuda.current_device() if device == "mixed" else None
    pipe = _new_pipeline(batch_size, num_threads, device_id, seed, prefetch)
    with pipe:
        encoded, labels = _inputs(source)
        graph = _train_graph if preset.train else _eval_graph
        images, window = graph(encoded, preset, device)
        images = _normalize_graph(images, preset, window)
        if device == "mixed":
            labels = labels.gpu()  # next to the images, so the loss needs no copy
        pipe.set_outputs(images, labels)
    pipe.build()
    return pipe


def build_host_pipeline(
    source: Iterator[tuple[list, list]],
    preset: Preset,
    batch_size: int,
    num_threads: int,
    seed: int,
    prefetch: int,
) -> Any:
    """A built CPU DALI Pipeline with outputs (uint8 HWC images to resize, labels int64, *draws).

    The first stage of the CPU path (see _host_graph); hostfinish.HostFinish does the rest.
    """
    pipe = _new_pipeline(batch_size, num_threads, None, seed, prefetch)
    with pipe:
        encoded, labels = _inputs(source)
        images, draws = _host_graph(encoded, preset)
        pipe.set_outputs(images, labels, *draws)
    pipe.build()
    return pipe


class DaliDecoder:
    """Iterator over decoded batches: (images float32 (N, 3, H, W), labels int64 (N,)).

    `batches` yields lists of (encoded bytes, label) of at most `batch_size`
    samples; the last may be smaller. Batches come out in input order, N equal to
    the input batch's length, and the iterator ends when the input ends. Both
    tensors are on the GPU (torch's current device) with device "mixed", else on
    the CPU. device=None picks "mixed" when CUDA is available, else "cpu".
    Augmentation is deterministic given `seed` and the input order.

    `prefetch` batches are decoded ahead, so the input iterable is read up to
    `prefetch` batches before their results are returned. On the CPU a new batch
    may reuse the memory of an earlier one that nothing refers to any more
    (hostfinish.BatchPool); batches the caller still holds are never touched.
    """

    def __init__(
        self,
        batches: Iterable[list[tuple[bytes, int]]],
        preset: Preset,
        batch_size: int,
        num_threads: int = 2,
        seed: int = 0,
        prefetch: int = 4,  # 2 -> 4: +10% on the 2-core CPU path (host stage and DALI threads overlap)
        device: str | None = None,
    ) -> None:
        if batch_size < 1 or num_threads < 1 or prefetch < 1:
            raise ValueError(
                f"batch_size, num_threads and prefetch must be >= 1, "
                f"got {batch_size}, {num_threads}, {prefetch}"
            )
        self.preset = preset
        self.batch_size = batch_size
        self.device = resolve_device(device)
        feed = _feed(batches, batch_size)
        self._done = False
        if self.device == "cpu":
            self._pipe = build_host_pipeline(feed, preset, batch_size, num_threads, seed, prefetch)
            self._finish = HostFinish(preset, batch_size)
            return
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self._pipe = build_pipeline(feed, preset, batch_size, num_threads, seed, prefetch, self.device)
        # size=-1: run until external_source's generator is exhausted (no epoch
        # length, no last-batch padding policy). prepare_first_batch=False: read no
        # input before the first next().
        self._iterator = DALIGenericIterator(
            self._pipe, ["images", "labels"], size=-1, prepare_first_batch=False
        )
        self._finish = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._done:
            raise StopIteration
        try:
            if self._finish is None:
                outputs = next(self._iterator)[0]  # one pipeline: a list of one dict
                return outputs["images"], outputs["labels"]
            # run() returns the prefetched batches, then raises StopIteration once
            # the generator is exhausted and the queue is empty.
            images, labels, *draws = self._pipe.run()
        except StopIteration:
            self._done = True
            raise
        batch = self._finish(images, [draw.as_array() for draw in draws])
        return batch, torch.from_numpy(np.array(labels.as_array(), dtype=np.int64))
