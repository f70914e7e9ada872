"""Regression tests for the ways pack used to lose data: --overwrite taking a user's
files, two writers on one split, a finished pack whose shards went missing or bad."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, make_image_folder, run_cli
from lt_dist.shards.outdir import LOCK_FILE, check_split_name, is_own_file


def pack(args, capsys):
    return run_cli(["pack", *args, "--no-progress"], capsys)


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder but the lock file (which each writer rewrites)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture
def packed(tmp_path, capsys) -> tuple[Path, Path]:
    images = make_image_folder(tmp_path / "images", [7, 5, 3])
    out = tmp_path / "shards" / "tiny"
    status, _, err = pack([images, "--out", out, "--shard-count", 3], capsys)
    assert status == 0, err
    return images, out


@pytest.mark.parametrize("name", ["train", "val-2", "inat_2018", "v1.0"])
def test_plain_split_names_pass(name):
    assert check_split_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", ".hidden", "a b", "x" * 101, "tr\nain"])
def test_other_split_names_are_refused(name):
    with pytest.raises(ValueError, match="is not a split name"):
        check_split_name(name)


def test_own_files_are_recognised_and_nothing_else():
    own = ["cls00003-00012.tar", ".cls00003-00012.tar.tmp-4711", "manifest.parquet", "manifest.parquet.tmp-9",
           "dataset.json", "ids.txt", ".pack-plan.json", ".pack-plan.json.tmp-12", LOCK_FILE]
    foreign = ["notes.txt", "cls3-1.tar", "manifest.parquet.bak", "photo.jpg", ".bashrc", "dataset.json~"]
    assert all(is_own_file(name) for name in own)
    assert not any(is_own_file(name) for name in foreign)


def test_overwrite_with_a_users_file_in_the_split_deletes_nothing(packed, capsys):
    images, out = packed
    (out / "train" / "notes.txt").write_text("mine\n")
    before = digests(out.parent)
    status, _, err = pack([images, "--out", out, "--shard-count", 2, "--overwrite"], capsys)
    assert status == 2 and "'notes.txt'" in err
    assert digests(out.parent) == before


def test_overwrite_replaces_lt_dists_own_files(packed, capsys):
    images, out = packed
    status, _, err = pack([images, "--out", out, "--shard-count", 2, "--overwrite"], capsys)
    assert status == 0, err
    shards = sorted(p.name for p in (out / "train").glob("*.tar"))
    assert shards == ["cls00000-00000.tar", "cls00000-00001.tar", "cls00000-00002.tar", "cls00000-00003.tar",
                      "cls00001-00000.tar", "cls00001-00001.tar", "cls00001-00002.tar",
                      "cls00002-00000.tar", "cls00002-00001.tar"]  # ceil(n_j / 2) per class
    assert run_cli(["verify", out], capsys)[0] == 0


def test_dotdot_and_empty_split_with_overwrite_delete_nothing(packed, capsys):
    images, out = packed
    (out.parent / "other").mkdir()
    (out.parent / "other" / "keep.txt").write_text("keep\n")
    before = digests(out.parent)
    for split in ("..", ""):
        status, _, err = pack([images, "--out", out, "--split", split, "--overwrite"], capsys)
        assert status == 2 and f"--split {split!r}" in err
    assert digests(out.parent) == before


def hold_lock(split_dir: Path) -> subprocess.Popen:
    """A process that holds the split's writer lock until killed."""
    code = ("import sys; from lt_dist.shards.outdir import SplitLock\n"
            "SplitLock(sys.argv[1]).__enter__(); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(split_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys):
    images = make_image_folder(tmp_path / "images", [3, 2])
    out = tmp_path / "shards" / "tiny"
    holder = hold_lock(out / "train")
    try:
        status, _, err = pack([images, "--out", out], capsys)
        assert status == 2 and f"being written by lt_dist pid {holder.pid}" in err
        assert not (out / "train" / "manifest.parquet").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"pid {holder.pid}" in (out / "train" / LOCK_FILE).read_text()  # the dead holder's lock file stays
    status, _, err = pack([images, "--out", out], capsys)
    assert status == 0, err
    assert run_cli(["verify", out], capsys)[0] == 0


def test_two_packs_at_once_never_both_claim_success_with_shards_missing(tmp_path):
    """Two real packs race on one output: each either finishes, finds it finished, or is
    refused by the lock; whatever the interleaving, the result verifies."""
    images = make_image_folder(tmp_path / "images", [40, 30, 20])
    out = tmp_path / "shards" / "race"
    command = [sys.executable, "-m", "lt_dist.cli", "pack", str(images), "--out", str(out),
               "--shard-count", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    for status, err in results:
        assert status == 0 or (status == 2 and "being written by" in err), err
    assert any(status == 0 for status, _ in results)
    verify = subprocess.run([sys.executable, "-m", "lt_dist.cli", "verify", str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout


def test_rerun_of_a_finished_pack_repairs_missing_and_damaged_shards(packed, capsys):
    images, out = packed
    train = out / "train"
    before = digests(train)
    (train / "cls00000-00001.tar").unlink()
    damaged = bytearray((train / "cls00001-00000.tar").read_bytes())
    damaged[1000] ^= 0xFF
    (train / "cls00001-00000.tar").write_bytes(bytes(damaged))
    status, _, err = pack([images, "--out", out, "--shard-count", 3], capsys)
    assert status == 0, err
    assert "2 finished shards are missing or damaged" in err
    after = digests(train)
    assert {name: digest for name, digest in after.items() if name != "dataset.json"} == \
           {name: digest for name, digest in before.items() if name != "dataset.json"}  # created time differs
    assert run_cli(["verify", out, "--decode"], capsys)[0] == 0


def test_repair_never_deletes_a_file_a_shard_table_names_outside_the_split(packed, capsys):
    """A shards.parquet edited to name "../../outside.tar" (wrong size): the repair run must
    not delete that file, only lt-dist's own shard names inside the split."""
    import pyarrow.parquet as pq

    images, out = packed
    train = out / "train"
    outside = out.parent.parent / "outside.tar"
    outside.write_bytes(b"user data")
    table = pq.read_table(train / "shards.parquet")
    paths = table.column("path").to_pylist()
    paths[0] = "../../../outside.tar"
    table = table.set_column(table.schema.get_field_index("path"), "path", [paths])
    pq.write_table(table, train / "shards.parquet")
    status, _, err = pack([images, "--out", out, "--shard-count", 3], capsys)
    assert status == 0, err
    assert outside.read_bytes() == b"user data"


def test_unfinished_pack_with_a_cut_shard_writes_it_again(packed, capsys):
    """A finished shard cut short after the fact (a torn copy, a full disk) is not reused."""
    images, out = packed
    train = out / "train"
    shard = train / "cls00000-00000.tar"
    original = shard.read_bytes()
    (train / "manifest.parquet").unlink()  # the pack is unfinished again
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[2].offset  # after the first sample (image + cls members)
    shard.write_bytes(original[:cut])  # at a member boundary, tarfile reads it without complaint
    status, _, err = pack([images, "--out", out, "--shard-count", 3], capsys)
    assert status == 0, err
    assert shard.read_bytes() == original
    assert run_cli(["verify", out, "--decode"], capsys)[0] == 0


def test_splits_of_one_dataset_must_share_classes(packed, tmp_path, capsys):
    """A val packed from another source is refused at pack time, and check_splits_agree
    (what training and extraction call) names it when it got there by hand."""
    from lt_dist.errors import UserInputError
    from lt_dist.shards.manifest import check_splits_agree

    images, out = packed
    other = make_image_folder(tmp_path / "other", [2, 2, 2, 2])
    status, _, err = pack([other, "--out", out, "--split", "val"], capsys)
    assert status == 2 and "split 'train'" in err and "3 classes there, 4 here" in err
    assert not (out / "val").exists()
    status, _, err = pack([other, "--out", tmp_path / "elsewhere", "--split", "val"], capsys)
    assert status == 0, err
    (tmp_path / "elsewhere" / "val").rename(out / "val")
    with pytest.raises(UserInputError, match=r"val' has other classes than .*train'.*4 classes in it, 3 in the first"):
        check_splits_agree([str(out / "train"), str(out / "val")])
    assert check_splits_agree([str(out / "train")]) == ["class_00", "class_01", "class_02"]


@pytest.mark.parametrize("damage", ["dataset.json", "ids.txt"])
def test_rerun_rewrites_a_lost_or_garbled_index_file(packed, capsys, damage):
    images, out = packed
    before = (out / "train" / "manifest.parquet").read_bytes()
    if damage == "dataset.json":
        (out / "train" / damage).write_text("{torn")
    else:
        (out / "train" / damage).unlink()
    status, _, err = pack([images, "--out", out, "--shard-count", 3], capsys)
    assert status == 0 and "index files are damaged" in err, err
    assert (out / "train" / "manifest.parquet").read_bytes() == before
    assert run_cli(["verify", out], capsys)[0] == 0 and run_cli(["stats", out], capsys)[0] == 0
