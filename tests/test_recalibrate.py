"""engine.recalibrate: BN statistics re-estimated on class-balanced batches of real packed images.

Each class is one solid-colour PNG repeated (counts 24/6/2), decoded with a deterministic
preset, so conv1's output on class j has a mean m_j the test computes by itself. With
cumulative averaging (momentum None, set by the test) and exact class-balanced quotas,
bn1's running mean must be the plain mean of the m_j: the instance-balanced answer (the
count-weighted mean) is far from it.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from lt_dist.cli import main
from lt_dist.data.presets import IMAGENET_MEAN, IMAGENET_STD, get_preset
from lt_dist.dist import World
from lt_dist.engine.recalibrate import bn_layers, recalibrate_bn
from lt_dist.models.resnet import build_model
from lt_dist.shards.manifest import load_manifest

COUNTS = [24, 6, 2]
VALUES = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
SIZE = 16


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recal")
    for label, (count, value) in enumerate(zip(COUNTS, VALUES)):
        folder = root / "images" / f"class_{label:02d}"
        folder.mkdir(parents=True)
        for index in range(count):
            Image.fromarray(np.full((SIZE, SIZE, 3), value, np.uint8)).save(folder / f"img_{index:03d}.png")
    assert main(["pack", str(root / "images"), "--out", str(root / "ds"), "--no-progress"]) == 0
    return str(root / "ds" / "train")


def conv1_mean(model, value) -> torch.Tensor:
    """(64,) per-channel mean of conv1 on one normalised solid image, computed here."""
    pixels = (torch.tensor(value, dtype=torch.float32) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    image = pixels[:, None, None].expand(3, SIZE, SIZE)[None]
    with torch.no_grad():
        return model.backbone.conv1(image).mean(dim=(0, 2, 3))


def test_bn1_running_mean_is_the_class_balanced_mean(train_dir):
    torch.manual_seed(0)
    model = build_model("resnet10", len(COUNTS), small_input=True)
    for layer in bn_layers(model):
        layer.momentum = None  # cumulative average: the exact mean over every batch seen
        layer.reset_running_stats()
    counts = load_manifest(train_dir).samples_per_class
    ran = recalibrate_bn(model, train_dir, counts, get_preset("small_eval", size=SIZE), "torchvision",
                         batches=4, batch_size=6, workers=0, seed=0, world=World())
    assert ran == 4 and not model.training
    means = torch.stack([conv1_mean(model, value) for value in VALUES])
    balanced = means.mean(0)
    weighted = (means * torch.tensor(COUNTS, dtype=torch.float32)[:, None]).sum(0) / sum(COUNTS)
    running = model.backbone.bn1.running_mean
    assert torch.allclose(running, balanced, atol=1e-4)
    assert not torch.allclose(running, weighted, atol=1e-2)


def test_a_bad_batch_count_is_refused(train_dir):
    with pytest.raises(ValueError, match="--bn-batches"):
        recalibrate_bn(build_model("resnet10", 3, True), train_dir, np.array(COUNTS), None, "none", 0, 4, 0, 0,
                       World())


def test_extract_with_recalibration_changes_every_split_and_says_so(train_dir, tmp_path):
    import json
    import os

    from lt_dist.engine.checkpoint import save_best_model
    from lt_dist.stage2.store import read_split

    torch.manual_seed(1)
    model = build_model("resnet10", len(COUNTS), small_input=True)
    save_best_model(str(tmp_path), model, {"arch": "resnet10", "num_classes": 3, "small_input": True,
                                           "train_counts": COUNTS, "class_names": ["a", "b", "c"],
                                           "eval_preset": "small_eval", "image_size": SIZE})
    (tmp_path / "config.json").write_text(json.dumps({"train": {"train_preset": "small_train"}}))
    data = os.path.dirname(train_dir)
    common = ["extract", "--ckpt", str(tmp_path), "--data", data, "--decoder", "torchvision", "--workers", "0",
              "--batch-size", "8"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "recal"), "--bn-recalibrate", "class", "--bn-batches", "3"]) == 0
    info = json.loads((tmp_path / "recal" / "features.json").read_text())
    assert info["bn_recalibrate"] == {"sampler": "class", "batches": 3, "batch_size": 8,
                                      "train_preset": "small_train", "seed": 0}
    plain, recal = read_split(str(tmp_path / "plain"), "train"), read_split(str(tmp_path / "recal"), "train")
    assert not np.allclose(plain.features, recal.features)
    assert main([*common, "--out", str(tmp_path / "bad"), "--bn-recalibrate", "class", "--bn-batches", "0"]) == 2
