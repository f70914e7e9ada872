import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import REPO, free_port, make_image_folder, run_cli
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
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "lt_dist.cli",
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


def test_ctrl_c_leaves_no_half_written_features_and_a_rerun_finishes(run_and_data, tmp_path):
    import signal

    root, _ = run_and_data
    out = tmp_path / "f"
    command = [sys.executable, "-m", "lt_dist.cli", "extract", "--ckpt", str(root / "run"), "--data",
               str(root / "ds"), "--out", str(out), "--decoder", "torchvision", "--batch-size", "4"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = child.stdout.readline()  # the chosen --workers, said before the model and data load
    assert first.startswith("workers: "), first
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-3000:]
    assert err.strip() == ("lt_dist extract: interrupted; finished work is kept, run the same command again to "
                           "carry on"), err[-3000:]
    assert not (out / "features.json").exists() and not list(out.glob("*tmp-*")) and not list(out.glob(".*tmp-*"))
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert set(load_features(str(out))[0]) == {"train", "val"}


def output_on_a_terminal(command: list[str], timeout: float = 120.0) -> str:
    """stdout + stderr of a command run on a pseudo-terminal (isatty() is true, as for a person)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    leader, follower = pty.openpty()
    # 40 rows x 120 columns: a fresh pty has size 0 x 0, where tqdm draws nothing
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError("no output for %s s" % timeout)
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=timeout) == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_a_terminal_shows_one_progress_bar_per_split_unless_no_progress(run_and_data, tmp_path, quiet):
    root, _ = run_and_data
    command = [sys.executable, "-m", "lt_dist.cli", "extract", "--ckpt", str(root / "run"), "--data",
               str(root / "ds"), "--out", str(tmp_path / "f"), "--decoder", "torchvision", "--workers", "0",
               "--batch-size", "4"] + (["--no-progress"] if quiet else [])
    text = output_on_a_terminal(command)
    assert "train: 28 features" in text and "val: 6 features" in text
    bars = {split: f"extract {split}:" in text and "img" in text for split in ("train", "val")}
    assert bars == ({"train": False, "val": False} if quiet else {"train": True, "val": True}), text[-1500:]
