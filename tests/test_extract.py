import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import REPO, make_image_folder, run_cli
from lt_dist.engine.checkpoint import save_best_model
from lt_dist.models.resnet import build_model
from lt_dist.stage2.store import load_features


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """Packed train/val and a best_model.pt of an (untrained, seeded) small ResNet."""
    root = tmp_path_factory.mktemp("extract")
    from lt_dist.cli import main

    images = make_image_folder(root / "images", [20, 9, 5], size=(20, 20))
    assert main(["pack", str(images), "--out", str(root / "ds"), "--val-per-class", "2", "--no-progress"]) == 0
    torch.manual_seed(0)
    model = build_model("resnet10", 3, small_input=True)
    (root / "run").mkdir()
    save_best_model(str(root / "run"), model, {"arch": "resnet10", "num_classes": 3, "small_input": True,
                                               "epoch": 0, "train_counts": [18, 7, 3], "class_names": ["a", "b", "c"],
                                               "eval_preset": "small_eval", "image_size": 16})
    return root, model


@pytest.fixture(scope="module")
def single(run_and_data):
    """Features extracted by one process, in-process."""
    root, _ = run_and_data
    from lt_dist.cli import main

    assert main(["extract", "--ckpt", str(root / "run"), "--data", str(root / "ds"), "--out", str(root / "f1"),
                 "--decoder", "torchvision", "--workers", "0", "--batch-size", "4"]) == 0
    return root / "f1"


def test_extract_writes_memory_mappable_features_and_the_classifier(run_and_data, single):
    root, model = run_and_data
    splits, classifier = load_features(str(root / "f1"))
    assert set(splits) == {"train", "val"}
    train = splits["train"]
    assert train.features.shape == (28, 512) and train.features.dtype == np.float32
    assert not train.features.flags.owndata  # a view into the memory-mapped file
    assert train.labels.tolist() == [0] * 18 + [1] * 7 + [2] * 3
    assert np.array_equal(classifier["weight"], model.fc.weight.detach().numpy())
    assert classifier["train_counts"].tolist() == [18, 7, 3] and classifier["class_names"] == ["a", "b", "c"]
    # the stored features are the backbone's output on the eval transform
    from lt_dist.data.presets import get_preset
    from lt_dist.data.reader import ShardReader
    from lt_dist.data.tvdecode import decode_sample

    reader = ShardReader(str(root / "ds" / "train"))
    image = decode_sample(reader.read(5), get_preset("small_eval", size=16), torch.Generator())
    with torch.no_grad():
        expected = model.eval().features(image[None]).numpy()[0]
    assert np.allclose(train.features[5], expected, atol=1e-5)
    assert json.loads((root / "f1" / "features.json").read_text())["feature_dim"] == 512


def test_two_processes_write_the_same_files(run_and_data, single):
    root, _ = run_and_data
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29777", "-m", "lt_dist.cli",
                             "extract", "--ckpt", str(root / "run"), "--data", str(root / "ds"), "--split", "train",
                             "--out", str(root / "f2"), "--decoder", "torchvision", "--workers", "0",
                             "--batch-size", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one = pa.ipc.open_file(str(root / "f1" / "train.arrow")).read_all()
    two = pa.ipc.open_file(str(root / "f2" / "train.arrow")).read_all()
    assert one.column("key").to_pylist() == two.column("key").to_pylist()
    assert one.column("label").equals(two.column("label"))
    first = np.stack(one.column("feature").to_numpy(zero_copy_only=False))
    second = np.stack(two.column("feature").to_numpy(zero_copy_only=False))
    assert np.allclose(first, second, atol=1e-5)
    assert not [p for p in os.listdir(root / "f2") if ".part" in p]


def test_extract_refuses_a_class_count_mismatch(run_and_data, tmp_path, capsys):
    root, _ = run_and_data
    other = make_image_folder(tmp_path / "img", [4, 4], size=(20, 20))
    run_cli(["pack", other, "--out", tmp_path / "ds", "--no-progress"], capsys)
    status, _, err = run_cli(["extract", "--ckpt", root / "run", "--data", tmp_path / "ds", "--out", tmp_path / "f",
                              "--split", "train"], capsys)
    assert status == 2 and "has 2 classes, the checkpoint 3" in err


def test_features_record_their_checkpoint_and_refuse_another(run_and_data, single, tmp_path, capsys):
    """features.json holds best_model.pt's sha256 per split; a second checkpoint cannot add to the folder,
    and another split of the same checkpoint keeps the ones already there."""
    import hashlib
    import shutil

    root, _ = run_and_data
    sha = hashlib.sha256((root / "run" / "best_model.pt").read_bytes()).hexdigest()
    index = json.loads((single / "features.json").read_text())
    assert index["ckpt_sha256"] == sha and {s["ckpt_sha256"] for s in index["splits"].values()} == {sha}
    other_run = tmp_path / "other"
    other_run.mkdir()
    torch.manual_seed(1)
    save_best_model(str(other_run), build_model("resnet10", 3, small_input=True),
                    {"arch": "resnet10", "num_classes": 3, "small_input": True, "train_counts": [18, 7, 3],
                     "class_names": ["a", "b", "c"], "eval_preset": "small_eval", "image_size": 16})
    folder = tmp_path / "f"
    shutil.copytree(single, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    status, _, err = run_cli(["extract", "--ckpt", other_run, "--data", root / "ds", "--out", folder,
                              "--split", "val"], capsys)
    assert status == 2 and "features of different checkpoints are never mixed" in err and sha[:12] in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    status, _, _ = run_cli(["extract", "--ckpt", root / "run", "--data", root / "ds", "--out", folder,
                            "--split", "val", "--decoder", "torchvision", "--workers", "0", "--batch-size", "4"],
                           capsys)
    assert status == 0
    assert set(json.loads((folder / "features.json").read_text())["splits"]) == {"train", "val"}
    load_features(str(folder))  # provenance agrees
