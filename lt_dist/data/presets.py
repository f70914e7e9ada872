"""Augmentation recipes by name, shared by the DALI and torchvision decoders.

A Preset is a plain value: the decoders read its fields and never look up a run
config. Images are always decoded to 3-channel RGB (grayscale PNGs included), so
mean/std always have three entries.

    PRESETS = {"imagenet_train": ..., "imagenet_eval": ..., "inat_train": ..., "inat_eval": ...,
               "small_train": ..., "small_eval": ...}
Places-LT's official transforms are ImageNet's (same mean/std, same jitter): use the
imagenet presets for it.
    get_preset("small_eval", crop_size=28)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official iNaturalist 2018 configs normalise with this dataset's own statistics.
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)


@dataclass(frozen=True)
class Preset:
    """How one image becomes a (3, crop_size, crop_size) normalised float tensor."""

    name: str  # the PRESETS key it was built from
    train: bool  # True: random resized crop (+flip, jitter); False: resize + center crop
    crop_size: int  # output height = width, in pixels
    resize_size: int  # eval only: short side is resized to this before the center crop
    scale: tuple[float, float] = (0.08, 1.0)  # train: RandomResizedCrop area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # train: RandomResizedCrop aspect (w/h) range
    flip: bool = False  # train: random horizontal flip with probability 1/2
    color_jitter: float = 0.0  # train: brightness=contrast=saturation=this, hue 0; 0 = off
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel (RGB), in 0..1 units
    std: tuple[float, float, float] = IMAGENET_STD  # per channel (RGB), in 0..1 units

    def __post_init__(self) -> None:
        # Lists from a YAML/JSON config become tuples, so the value stays hashable.
        for field in ("scale", "ratio", "mean", "std"):
            object.__setattr__(self, field, tuple(float(v) for v in getattr(self, field)))
        _check_preset(self)


def _check_preset(preset: Preset) -> None:
    """Raise ValueError naming the first field that cannot work."""
    if preset.crop_size < 1 or preset.resize_size < 1:
        raise ValueError(
            f"preset {preset.name!r}: crop_size and resize_size must be >= 1, "
            f"got {preset.crop_size} and {preset.resize_size}"
        )
    if not preset.train and preset.resize_size < preset.crop_size:
        # A center crop larger than the resized image would need padding.
        raise ValueError(
            f"preset {preset.name!r}: resize_size {preset.resize_size} is smaller "
            f"than crop_size {preset.crop_size}"
        )
    low, high = preset.scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"preset {preset.name!r}: scale must satisfy 0 < lo <= hi <= 1, got {preset.scale}")
    low, high = preset.ratio
    if not 0 < low <= high:
        raise ValueError(f"preset {preset.name!r}: ratio must satisfy 0 < lo <= hi, got {preset.ratio}")
    if not 0 <= preset.color_jitter < 1:
        # Factors are drawn from [1 - j, 1 + j]; j >= 1 would allow a black image.
        raise ValueError(f"preset {preset.name!r}: color_jitter must be in [0, 1), got {preset.color_jitter}")
    if len(preset.mean) != 3 or len(preset.std) != 3 or min(preset.std) <= 0:
        raise ValueError(
            f"preset {preset.name!r}: mean and std need 3 entries (RGB) and std > 0, "
            f"got mean={preset.mean} std={preset.std}"
        )


def imagenet_train(size: int = 224) -> Preset:
    """RandomResizedCrop(size), horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0) (the paper's recipe)."""
    return Preset(name="imagenet_train", train=True, crop_size=size, resize_size=size,
                  flip=True, color_jitter=0.4)


def imagenet_eval(size: int = 224, resize_size: int = 256) -> Preset:
    """Resize(256) on the short side, CenterCrop(224)."""
    return Preset(name="imagenet_eval", train=False, crop_size=size, resize_size=resize_size)


def inat_train(size: int = 224) -> Preset:
    """iNaturalist 2018 (official): RandomResizedCrop(size), flip, no colour jitter, iNat mean/std."""
    return Preset(name="inat_train", train=True, crop_size=size, resize_size=size, flip=True,
                  mean=INAT_MEAN, std=INAT_STD)


def inat_eval(size: int = 224, resize_size: int = 256) -> Preset:
    """iNaturalist 2018: Resize(256), CenterCrop(224), iNat mean/std."""
    return Preset(name="inat_eval", train=False, crop_size=size, resize_size=resize_size,
                  mean=INAT_MEAN, std=INAT_STD)


def small_train(size: int = 32) -> Preset:
    """For 28-32 px images: RandomResizedCrop(size, scale=(0.35, 1)) and flip, no jitter.

    The milder area range keeps most of a tiny image; 8% of 28x28 is about 8x8 px.
    """
    return Preset(name="small_train", train=True, crop_size=size, resize_size=size,
                  scale=(0.35, 1.0), flip=True)


def small_eval(size: int = 32) -> Preset:
    """Short side resized to size, then center crop size (identity-like for 28 px with size=28)."""
    return Preset(name="small_eval", train=False, crop_size=size, resize_size=size)


PRESETS: dict[str, Callable[..., Preset]] = {
    "imagenet_train": imagenet_train,
    "imagenet_eval": imagenet_eval,
    "inat_train": inat_train,
    "inat_eval": inat_eval,
    "small_train": small_train,
    "small_eval": small_eval,
}


def get_preset(name: str, /, **overrides: Any) -> Preset:
    """The preset called `name`, with any Preset field replaced by `overrides`.

    `size=` is accepted as a shorthand for the constructor's size argument; every
    other keyword must be a Preset field (crop_size, resize_size, scale, ...).
    Raises ValueError for an unknown name or field.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; accepted: {', '.join(sorted(PRESETS))}")
    size = overrides.pop("size", None)
    preset = PRESETS[name]() if size is None else PRESETS[name](size)
    fields = {field.name for field in dataclasses.fields(Preset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown preset field(s) {', '.join(unknown)} for {name!r}; "
            f"accepted: size, {', '.join(sorted(fields - {'name'}))}"
        )
    if "name" in overrides:
        raise ValueError("the preset name cannot be overridden; pick another preset")
    return dataclasses.replace(preset, **overrides)
