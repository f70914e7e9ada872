"""Augmentation presets: the name table, overrides, validation, purity."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from lt_dist.data.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Preset, get_preset


def test_table_has_the_six_recipes():
    assert set(PRESETS) == {"imagenet_train", "imagenet_eval", "inat_train", "inat_eval", "small_train", "small_eval"}
    for name, build in PRESETS.items():
        preset = build()
        assert preset.name == name
        assert preset.train == name.endswith("_train")


def test_imagenet_recipes_match_the_paper():
    train, val = get_preset("imagenet_train"), get_preset("imagenet_eval")
    assert (train.crop_size, train.scale, train.flip, train.color_jitter) == (224, (0.08, 1.0), True, 0.4)
    assert train.ratio == pytest.approx((3 / 4, 4 / 3))
    assert (val.resize_size, val.crop_size, val.flip, val.color_jitter) == (256, 224, False, 0.0)
    assert train.mean == val.mean == IMAGENET_MEAN and train.std == val.std == IMAGENET_STD


def test_inat_recipes_match_the_official_configs():
    train, val = get_preset("inat_train"), get_preset("inat_eval")
    assert (train.crop_size, train.scale, train.flip, train.color_jitter) == (224, (0.08, 1.0), True, 0.0)
    assert (val.resize_size, val.crop_size) == (256, 224)
    assert train.mean == val.mean == (0.466, 0.471, 0.380) and train.std == val.std == (0.195, 0.194, 0.192)


def test_small_recipes_and_size_shorthand():
    train = get_preset("small_train")
    assert (train.crop_size, train.scale, train.flip, train.color_jitter) == (32, (0.35, 1.0), True, 0.0)
    fmnist = get_preset("small_eval", size=28)
    assert (fmnist.resize_size, fmnist.crop_size, fmnist.train) == (28, 28, False)
    assert get_preset("small_train", size=28).crop_size == 28


def test_field_overrides_and_lists_become_tuples():
    preset = get_preset("imagenet_train", scale=[0.2, 1.0], color_jitter=0.0, crop_size=160)
    assert preset.scale == (0.2, 1.0) and preset.color_jitter == 0.0 and preset.crop_size == 160
    hash(preset)  # frozen and made of tuples: usable as a key
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.crop_size = 1  # type: ignore[misc]


def test_unknown_preset_names_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'imagenet_trian'.*imagenet_eval.*imagenet_train"):
        get_preset("imagenet_trian")


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match=r"unknown preset field\(s\) crop\b.*crop_size"):
        get_preset("small_eval", crop=28)
    with pytest.raises(ValueError, match="name"):
        get_preset("small_eval", name="other")


@pytest.mark.parametrize(
    "overrides, word",
    [
        ({"crop_size": 0}, "crop_size"),
        ({"resize_size": 100}, "resize_size 100 is smaller"),
        ({"scale": (0.5, 0.2)}, "scale"),
        ({"ratio": (0.0, 1.0)}, "ratio"),
        ({"color_jitter": 1.5}, "color_jitter"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": (0.5,)}, "mean"),
    ],
)
def test_bad_values_raise_with_the_field(overrides, word):
    with pytest.raises(ValueError, match=word):
        get_preset("imagenet_eval", **overrides)


def test_preset_can_be_built_directly():
    preset = Preset(name="custom", train=False, crop_size=64, resize_size=72)
    assert preset.scale == (0.08, 1.0) and not preset.flip


def test_presets_module_imports_no_third_party_package():
    code = (
        "import sys; import lt_dist.data.presets; "
        "print(sorted(m for m in ('torch', 'numpy', 'nvidia.dali', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
