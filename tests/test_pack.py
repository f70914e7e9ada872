import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import REPO, make_image_folder, run_cli, sigkill_when
from lt_dist.shards.manifest import load_manifest


def pack(args, capsys):
    return run_cli(["pack", *args, "--no-progress"], capsys)


@pytest.fixture
def packed(image_folder, tmp_path, capsys):
    out = tmp_path / "shards" / "tiny"
    status, _, err = pack([image_folder, "--out", out, "--shard-count", 5, "--workers", 2], capsys)
    assert status == 0, err
    return out / "train"


def test_round_trip_through_webdataset(packed, image_folder):
    manifest = load_manifest(str(packed))
    urls = [str(packed / path) for path in manifest.shards.column("path").to_pylist()]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 30
    for sample in samples:
        label = int(sample["cls"])
        class_dir = f"class_{label:02d}"
        assert sample["__key__"].startswith(class_dir + "/")
        original = (image_folder / f"{sample['__key__']}.jpg").read_bytes()
        assert sample["jpg"] == original  # stored as read, not re-encoded


def test_every_shard_one_class_and_limits_hold(packed):
    manifest = load_manifest(str(packed))
    assert manifest.samples_per_class.tolist() == [12, 8, 5, 3, 2]
    for shard in manifest.shards.to_pylist():
        with tarfile.open(packed / shard["path"]) as tar:
            labels = {tar.extractfile(m).read() for m in tar if m.name.endswith(".cls")}
        assert labels == {str(shard["label"]).encode()}
        assert shard["path"].startswith(f"cls{shard['label']:05d}-")
        assert 1 <= shard["count"] <= 5
    # 12 images at 5 per shard -> 3 shards for class 0
    assert sorted(p for p in manifest.shards.column("path").to_pylist() if p.startswith("cls00000")) == [
        "cls00000-00000.tar", "cls00000-00001.tar", "cls00000-00002.tar"]


def test_manifest_offsets_read_the_image_bytes(packed, image_folder):
    rows = pq.read_table(packed / "manifest.parquet").to_pylist()
    assert len(rows) == 30
    for row in rows:
        with open(packed / row["shard"], "rb") as handle:
            handle.seek(row["offset"])
            data = handle.read(row["size"])
        assert data == (image_folder / row["id"]).read_bytes()
        assert (row["width"], row["height"], row["ext"]) == (40, 30, "jpg")


def test_dataset_json_and_ids_list(packed, image_folder):
    info = json.loads((packed / "dataset.json").read_text())
    assert info["format_version"] == 1 and info["split"] == "train"
    assert info["class_names"][0] == "class_00" and info["samples_per_class"] == [12, 8, 5, 3, 2]
    assert info["split_sizes"] == {"train": 30} and info["skipped"] == []
    assert info["command"][:2] == ["lt_dist", "pack"] or info["command"][0] == "lt_dist"
    assert info["source"] == {"kind": "folder", "location": str(image_folder)}
    ids = (packed / "ids.txt").read_text().splitlines()
    assert len(ids) == 30 and ids[0] == "class_00/img_0000.jpg 0"


def test_shard_size_limit_rolls_over(image_folder, tmp_path, capsys):
    out = tmp_path / "s"
    status, _, err = pack([image_folder, "--out", out, "--shard-size", "12KiB"], capsys)
    assert status == 0, err
    shards = load_manifest(str(out / "train")).shards.to_pylist()
    assert all(s["bytes"] <= 12 * 1024 for s in shards)
    assert len(shards) > 5


def test_idx_long_tailed_subset_with_val_and_rebuild(idx_folder, tmp_path, capsys):
    out = tmp_path / "lt"
    args = [ "--idx", idx_folder, "--out", out, "--profile", "exp", "--imbalance", 10,
            "--max-per-class", 20, "--val-per-class", 4, "--seed", 3]
    status, stdout, err = pack(args, capsys)
    assert status == 0, err
    train, val, test = (load_manifest(str(out / s)) for s in ("train", "val", "test"))
    assert train.samples_per_class.tolist() == [20, 9, 4, 2]
    assert val.samples_per_class.tolist() == [4, 4, 4, 4]
    assert "train: 35 images (20 to 2 per class)" in stdout and "val: 16 images (4 to 4 per class)" in stdout
    assert test.samples_per_class.tolist() == [5, 5, 5, 5]
    assert not set(train.samples.column("id").to_pylist()) & set(val.samples.column("id").to_pylist())
    assert train.samples.column("ext").unique().to_pylist() == ["png"]
    # the written id list rebuilds exactly the same subset
    again = tmp_path / "again"
    status, _, err = pack(["--idx", idx_folder, "--out", again, "--ids", out / "train" / "ids.txt"], capsys)
    assert status == 0, err
    assert (again / "train" / "ids.txt").read_text() == (out / "train" / "ids.txt").read_text()
    assert load_manifest(str(again / "train")).shards.column("sha256").to_pylist() == \
        train.shards.column("sha256").to_pylist()


def test_rerun_of_a_finished_pack_does_nothing(packed, image_folder, capsys):
    def files():  # the lock file is rewritten by every writer; the data is not
        return {p.name: p.stat().st_mtime_ns for p in packed.iterdir() if p.name != ".lt-dist.lock"}

    before = files()
    status, _, err = pack([image_folder, "--out", packed.parent, "--shard-count", 5], capsys)
    assert status == 0 and "already packed" in err
    assert files() == before


def test_killed_pack_resumes_without_redoing_finished_shards(tmp_path, capsys):
    images = make_image_folder(tmp_path / "big", [300] * 4, size=(320, 240))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lt_dist.cli", "pack", str(images), "--out", str(out),
               "--shard-count", "10", "--workers", "1", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE)
    split = out / "train"
    sigkill_when(process, lambda: split.is_dir() and len(list(split.glob("cls*.tar"))) >= 3, 0.002,
                 "the pack finished before it could be killed", timeout_s=60)
    finished = {p.name: p.stat().st_mtime_ns for p in split.glob("cls*.tar")}
    assert 3 <= len(finished) < 120
    assert not (split / "manifest.parquet").exists() and not (split / "dataset.json").exists()

    status, summary, err = pack([images, "--out", out, "--shard-count", 10], capsys)
    assert status == 0, err
    assert summary.count("\n") == 1 and f"{len(finished)} finished shards reused" in summary
    assert {name: (split / name).stat().st_mtime_ns for name in finished} == finished
    assert not [p for p in split.iterdir() if ".tmp-" in p.name]
    status, out_text, _ = run_cli(["verify", out, "--decode"], capsys)
    assert status == 0, out_text
    assert "1200 samples, 1200 decoded: OK" in out_text


# --- bad input: each stops with a message naming the file, line or value ---

def test_missing_image_file_is_named(tmp_path, image_folder, capsys):
    split = tmp_path / "split.txt"
    split.write_text("class_00/img_0000.jpg 0\nclass_01/nope.jpg 1\n")
    status, _, err = pack(["--list", split, "--root", image_folder, "--out", tmp_path / "o"], capsys)
    assert status == 2 and "missing image file" in err and "split.txt:2" in err
    assert not (tmp_path / "o").exists()


def test_undecodable_image_stops_or_is_skipped(image_folder, tmp_path, capsys):
    bad = image_folder / "class_01" / "img_0003.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    out = tmp_path / "o"
    status, _, err = pack([image_folder, "--out", out], capsys)
    assert status == 2 and "cannot decode" in err and "class_01/img_0003.jpg" in err
    assert not (out / "train" / "manifest.parquet").exists()
    status, stdout, err = pack([image_folder, "--out", out, "--on-bad-image", "skip"], capsys)
    assert status == 0, err
    assert "1 skipped" in stdout and "skipped class_01/img_0003.jpg" in err
    info = json.loads((out / "train" / "dataset.json").read_text())
    assert info["samples_per_class"] == [12, 7, 5, 3, 2]
    assert info["skipped"][0]["id"] == "class_01/img_0003.jpg"


def test_garbage_file_is_not_an_image(image_folder, tmp_path, capsys):
    (image_folder / "class_02" / "zz.png").write_bytes(b"this is not a png")
    status, _, err = pack([image_folder, "--out", tmp_path / "o"], capsys)
    assert status == 2 and "class_02/zz.png" in err


@pytest.mark.parametrize("line, message", [("class_00/img_0001.jpg x", "label 'x' is not an integer"),
                                           ("class_00/img_0001.jpg 7", "label 7 is out of range")])
def test_bad_labels_are_named(tmp_path, image_folder, capsys, line, message):
    split = tmp_path / "split.txt"
    split.write_text(f"class_00/img_0000.jpg 0\n{line}\n")
    status, _, err = pack(["--list", split, "--root", image_folder, "--num-classes", 2,
                           "--out", tmp_path / "o"], capsys)
    assert status == 2 and message in err and "split.txt:2" in err


def test_class_left_with_zero_images(tmp_path, image_folder, capsys):
    split = tmp_path / "split.txt"
    split.write_text("class_00/img_0000.jpg 0\nclass_01/gone.jpg 1\n")
    status, _, err = pack(["--list", split, "--root", image_folder, "--out", tmp_path / "o",
                           "--on-bad-image", "skip"], capsys)
    assert status == 2 and "class 1 is left with zero images" in err


def test_duplicate_keys_are_named(tmp_path, image_folder, capsys):
    split = tmp_path / "split.txt"
    split.write_text("class_00/img_0000.jpg 0\nclass_00/img_0000.jpg 0\n")
    status, _, err = pack(["--list", split, "--root", image_folder, "--out", tmp_path / "o"], capsys)
    assert status == 2 and "duplicate key 'class_00/img_0000'" in err and "split.txt:1" in err


def test_output_folder_with_another_dataset_is_refused(packed, image_folder, tmp_path, capsys):
    other = make_image_folder(tmp_path / "other", [3, 3])
    status, _, err = pack([other, "--out", packed.parent], capsys)
    assert status == 2 and "already holds a different dataset" in err
    stranger = tmp_path / "x" / "train"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("mine")
    status, _, err = pack([other, "--out", stranger.parent], capsys)
    assert status == 2 and "lt-dist did not write" in err
    status, _, err = pack([other, "--out", packed.parent, "--overwrite"], capsys)
    assert status == 0, err
    assert load_manifest(str(packed)).samples_per_class.tolist() == [3, 3]


def test_conflicting_inputs_are_refused(image_folder, tmp_path, capsys):
    status, _, err = pack([image_folder, "--idx", tmp_path, "--out", tmp_path / "o"], capsys)
    assert status == 2 and "exactly one input" in err


def test_a_killed_worker_ends_the_pack_instead_of_hanging(tmp_path, capsys):
    """A worker killed mid-pack (OOM killer, kill -9) fails the pack with one line and
    exit 1; the next run finishes it. (multiprocessing.Pool used to wait forever.)"""
    images = make_image_folder(tmp_path / "images", [120, 120, 120], size=(64, 48))
    out = tmp_path / "shards" / "killed"
    command = [sys.executable, "-m", "lt_dist.cli", "pack", str(images), "--out", str(out), "--workers", "2",
               "--shard-count", "10", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)

    def spawned_workers() -> list[int]:
        try:
            children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
            return [int(pid) for pid in children if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
        except OSError:  # the pack or a child ended between the two reads
            return []

    try:
        deadline = time.time() + 300
        while not (workers := spawned_workers()) and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert workers, "the pack ended before its workers were seen"
        os.kill(workers[0], signal.SIGKILL)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("lt_dist pack: a packing process died")
    status, _, err = pack([images, "--out", out, "--workers", 2, "--shard-count", 10], capsys)
    assert status == 0, err
    assert run_cli(["verify", out], capsys)[0] == 0
