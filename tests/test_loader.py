import numpy as np
import pytest
import torch

from conftest import make_image_folder
from lt_dist.data.loader import BalancedLoader, LoaderConfig
from lt_dist.data.presets import get_preset
from lt_dist.data.reader import ShardReader
from lt_dist.data.sampler import SamplerConfig
from lt_dist.dist import World
from lt_dist.shards.manifest import write_split_index


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    images = make_image_folder(root / "images", [23, 9, 4, 2], size=(48, 40))
    status = __import__("lt_dist.cli", fromlist=["main"]).main(
        ["pack", str(images), "--out", str(root / "ds"), "--shard-count", "3", "--no-progress"])
    assert status == 0
    return str(root / "ds" / "train")


def loader(split_dir, rank=0, world_size=1, decoder="none", workers=2, strategy="instance", batch=4, **kw):
    preset = get_preset("small_train", size=32) if decoder in ("dali", "torchvision") else None
    config = LoaderConfig(split_dir, batch, preset, SamplerConfig(strategy, seed=5, **kw), decoder, workers)
    return BalancedLoader(config, World(rank, world_size))


def test_instance_epoch_covers_every_sample_once_over_2_ranks_x_2_workers(split_dir):
    rows = [torch.cat([r for r, _ in loader(split_dir, rank, 2, workers=2)]) for rank in range(2)]
    assert len(rows[0]) == len(rows[1]) == 19  # 38 samples, equal per-rank counts
    assert sorted(torch.cat(rows).tolist()) == list(range(38))


def test_bytes_are_the_packed_images_and_labels_match(split_dir):
    reader = ShardReader(split_dir)
    rows = torch.cat([r for r, _ in loader(split_dir, decoder="none", workers=0)])
    data, labels = zip(*loader(split_dir, decoder="bytes", workers=2))
    flat = [item for batch in data for item in batch]
    assert [reader.read(int(r)) for r in rows] == flat
    assert torch.cat(labels).tolist() == reader.labels[rows.numpy()].tolist()


def test_resume_mid_epoch_equals_the_uninterrupted_sequence(split_dir):
    full = [r for r, _ in loader(split_dir, strategy="sqrt")]
    interrupted = loader(split_dir, strategy="sqrt")
    taken = []
    for batch, _ in interrupted:
        taken.append(batch)
        if len(taken) == 4:
            break
    state = interrupted.state_dict()
    resumed = loader(split_dir, strategy="sqrt")
    resumed.load_state_dict(state)
    rest = [r for r, _ in resumed]
    assert torch.equal(torch.cat(taken + rest), torch.cat(full))
    assert resumed.epoch == 1 and resumed.batches_done == 0  # the epoch finished, the next is ready


def test_torchvision_decoder_is_deterministic_across_a_resume(split_dir):
    full = [images for images, _ in loader(split_dir, decoder="torchvision", strategy="class")]
    assert full[0].shape == (4, 3, 32, 32) and full[0].dtype == torch.float32
    resumed = loader(split_dir, decoder="torchvision", strategy="class")
    resumed.load_state_dict({**resumed.state_dict(), "batches_done": 3})
    rest = [images for images, _ in resumed]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], rest, strict=True))


def test_dali_decoder_on_the_cpu(split_dir):
    pytest.importorskip("nvidia.dali")
    out = list(loader(split_dir, decoder="dali", strategy="class", workers=1, batch=8))
    expected_labels = torch.cat([labels for _, labels in loader(split_dir, strategy="class", batch=8)])
    assert out[0][0].shape == (8, 3, 32, 32)
    assert torch.equal(torch.cat([labels.cpu() for _, labels in out]), expected_labels)
    assert sum(len(images) for images, _ in out) == 38


def test_reader_keeps_open_files_under_the_cap(split_dir):
    reader = ShardReader(split_dir, max_open_files=2)
    for row in np.random.default_rng(0).permutation(len(reader)):
        reader.read(int(row))
        assert reader.open_files <= 2
    assert len(reader.shard_paths) > 10


def test_resume_refuses_another_configuration(split_dir):
    state = loader(split_dir, strategy="sqrt").state_dict()
    with pytest.raises(ValueError, match="sampler"):
        loader(split_dir, strategy="class").load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        loader(split_dir, strategy="sqrt", world_size=2).load_state_dict(state)


@pytest.mark.parametrize("kwargs, message", [({"strategy": "balanced"}, "unknown sampler 'balanced'"),
                                             ({"strategy": -1.0}, "q must be in"),
                                             ({"decoder": "opencv"}, "unknown decoder 'opencv'")])
def test_bad_loader_input(split_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        loader(split_dir, **kwargs)


def test_empty_manifest_is_refused(tmp_path):
    write_split_index(str(tmp_path), [], [], {"samples_per_class": [], "class_names": []})
    with pytest.raises(ValueError, match="holds no samples"):
        ShardReader(str(tmp_path))


def test_torchvision_batches_decoded_in_the_main_process_equal_the_workers_batches(split_dir):
    """device="cpu" runs the GPU path's code (data.tvbatch) on the CPU: same seeds, same tensors."""
    preset = get_preset("imagenet_train", size=32)  # jitter on: every draw is exercised

    def batches(device, start=0):
        config = LoaderConfig(split_dir, 4, preset, SamplerConfig("class", seed=5), "torchvision", 2, device=device)
        batch_loader = BalancedLoader(config, World())
        batch_loader.load_state_dict({**batch_loader.state_dict(), "batches_done": start})
        return list(batch_loader)

    in_workers, in_main = batches(None if not torch.cuda.is_available() else "cpu"), batches("cpu")
    assert len(in_workers) == len(in_main) > 3
    for (images, labels), (main_images, main_labels) in zip(in_workers, in_main):
        assert torch.equal(images, main_images) and torch.equal(labels, main_labels)
    resumed = batches("cpu", start=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(in_main[3:], resumed, strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_torchvision_decode_device_cuda_without_cuda_is_refused(split_dir):
    with pytest.raises(ValueError, match="decode device 'cuda' needs CUDA"):
        BalancedLoader(LoaderConfig(split_dir, 4, get_preset("small_train"), decoder="torchvision", device="cuda"),
                       World())
