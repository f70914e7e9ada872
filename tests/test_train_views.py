"""Augmented train views: `lt_dist extract --train-views K` and the trained heads walking one per epoch."""
import json

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from lt_dist.cli import main
from lt_dist.stage2.store import read_split, read_train_views
from lt_dist.stage2.training import TrainConfig, train_head
from lt_dist.stage2.types import FeatureSplit


def test_epoch_e_reads_view_e_mod_k():
    labels = np.repeat(np.arange(3), [6, 3, 3])
    eval_features = np.zeros((12, 2), np.float32)
    views = [np.full((12, 2), k + 1.0, np.float32) for k in range(3)]  # view k holds the value k + 1
    seen = []
    weight = torch.zeros(3, 2, requires_grad=True)

    def logits_fn(x):
        seen.append(float(x[0, 0]))
        assert torch.all(x == x[0, 0])  # one view per batch
        return x @ weight.T

    config = TrainConfig(epochs=5, batch_size=4, lr=0.1)
    train_head([{"params": [weight], "weight_decay": 0.0}], logits_fn, FeatureSplit(eval_features, labels, views),
               3, config, seed=0)
    per_epoch = len(seen) // 5
    assert seen == [float(epoch % 3 + 1) for epoch in range(5) for _ in range(per_epoch)]
    with pytest.raises(ValueError, match="shape"):
        FeatureSplit(eval_features, labels, (np.zeros((11, 2)),))


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    from lt_dist.engine.checkpoint import save_best_model
    from lt_dist.models.resnet import build_model

    root = tmp_path_factory.mktemp("views")
    images = make_image_folder(root / "images", [8, 4, 2], size=(24, 24))
    assert main(["pack", str(images), "--out", str(root / "ds"), "--val-per-class", "1", "--no-progress"]) == 0
    torch.manual_seed(0)
    (root / "run").mkdir()
    save_best_model(str(root / "run"), build_model("resnet10", 3, small_input=True),
                    {"arch": "resnet10", "num_classes": 3, "small_input": True, "train_counts": [7, 3, 1],
                     "class_names": ["a", "b", "c"], "eval_preset": "small_eval", "image_size": 16})
    (root / "run" / "config.json").write_text(json.dumps({"train": {"train_preset": "small_train"}}))
    return root


def test_extract_writes_k_augmented_views_in_train_order(run_and_data, tmp_path):
    root = run_and_data
    out = tmp_path / "features"
    assert main(["extract", "--ckpt", str(root / "run"), "--data", str(root / "ds"), "--out", str(out),
                 "--decoder", "torchvision", "--workers", "0", "--batch-size", "4", "--train-views", "2"]) == 0
    train = read_split(str(out), "train")
    views = read_train_views(str(out))
    assert len(views) == 2 and all(view.shape == train.features.shape for view in views)
    for k in range(2):
        stored = read_split(str(out), f"train.view{k:03d}")
        assert np.array_equal(stored.labels, train.labels)
    assert not np.allclose(views[0], views[1]) and not np.allclose(views[0], train.features)
    info = json.loads((out / "features.json").read_text())
    assert info["train_views"] == {"views": 2, "train_preset": "small_train", "seed": 0,
                                   "bytes_per_sample_per_view": 4 * 512}
    assert main(["extract", "--ckpt", str(root / "run"), "--data", str(root / "ds"), "--out", str(tmp_path / "x"),
                 "--train-views", "-1"]) == 2
