"""The DALI decoder's host stage: buffer reuse rules, geometry, flip, DALI's colour twist."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from lt_dist.data.hostfinish import BatchPool, HostFinish
from lt_dist.data.presets import Preset, get_preset
from lt_dist.data.tvdecode import decode_sample


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """uint8 (300, 400, 3) crop of the scikit-learn sample photo."""
    from sklearn.datasets import load_sample_images

    return np.ascontiguousarray(load_sample_images().images[0][:300, :400])


def test_pool_reuses_a_batch_only_once_nothing_refers_to_it():
    pool = BatchPool((4, 3, 2, 2), capacity=2)
    first = pool.take(4)
    pointer = first.data_ptr()
    assert pool.take(4).data_ptr() != pointer  # `first` is held: fresh memory
    row = first[1]
    del first
    assert pool.take(4).data_ptr() != pointer  # a view of it is still alive
    del row
    reused = pool.take(3)
    assert reused.data_ptr() == pointer and reused.shape == (3, 3, 2, 2)
    array = reused.numpy()
    del reused
    assert pool.take(4).data_ptr() != pointer  # a numpy array over it is still alive
    del array


def test_eval_is_torchvisions_resize_and_center_crop(photo):
    preset = get_preset("imagenet_eval")
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    expected = decode_sample(png.getvalue(), preset, torch.Generator())
    ours = HostFinish(preset, batch_size=2)([photo], [])
    assert ours.shape == (1, 3, 224, 224) and torch.allclose(ours[0], expected, atol=1e-5)


def test_train_resizes_the_crop_and_flips_by_the_coin(photo):
    preset = Preset(name="t", train=True, crop_size=64, resize_size=64, flip=True)
    images = HostFinish(preset, batch_size=2)([photo, photo], [np.array([0, 1], dtype=np.int32)])
    assert images.shape == (2, 3, 64, 64)
    assert torch.allclose(images[0], images[1].flip(-1), atol=1e-6)


def test_twist_matches_dalis_color_twist(photo):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    factors = (1.3, 0.7, 1.35)  # brightness, contrast, saturation
    square = np.ascontiguousarray(photo[:200, :200])

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        images = fn.external_source(source=lambda: [square], batch=True, layout="HWC", dtype=types.UINT8)
        return fn.color_twist(images, brightness=factors[0], contrast=factors[1], saturation=factors[2])

    pipe = pipeline()
    pipe.build()
    expected = np.asarray(pipe.run()[0][0]).astype(np.int64)
    finish = HostFinish(Preset(name="t", train=True, crop_size=200, resize_size=200, color_jitter=0.4), 1)
    target = torch.empty(3, 200, 200)
    finish._twist(torch.from_numpy(square).permute(2, 0, 1), target, *factors)
    ours = target.permute(1, 2, 0).numpy().astype(np.int64)
    assert np.abs(ours - expected).max() <= 1  # float rounding of the same formula
