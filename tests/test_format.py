import tarfile

import pytest

from lt_dist.shards.format import (TarShardWriter, file_sha256, make_key, parse_shard_name, shard_name)


def test_shard_name_round_trip():
    assert shard_name(42, 3) == "cls00042-00003.tar"
    assert parse_shard_name("cls00042-00003.tar") == (42, 3)
    assert parse_shard_name("manifest.parquet") is None


@pytest.mark.parametrize("sample_id, key", [
    ("train/n01440764/n01440764_762.JPEG", "train/n01440764/n01440764_762"),
    ("a/b/img.v2.jpg", "a/b/img_v2"),
    ("./x/y z.png", "x/y_z"),
    ("train/000123", "train/000123"),
])
def test_make_key_has_no_dot_in_the_base_name(sample_id, key):
    assert make_key(sample_id) == key


def test_writer_offsets_read_back_the_bytes_and_size_is_projected(tmp_path):
    path = str(tmp_path / "cls00001-00000.tar")
    payloads = [bytes([i]) * (100 + 700 * i) for i in range(5)]
    with TarShardWriter(path) as writer:
        offsets = [writer.add(f"k/{i}", "jpg", data, label=1) for i, data in enumerate(payloads)]
        projected = writer.projected_size()
        writer.commit()
    assert writer.bytes == projected == len(open(path, "rb").read())
    assert writer.sha256 == file_sha256(path)
    raw = open(path, "rb").read()
    for (offset, size), data in zip(offsets, payloads):
        assert raw[offset: offset + size] == data
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names[:2] == ["k/0.jpg", "k/0.cls"]
        assert tar.extractfile("k/3.cls").read() == b"1"


def test_writer_leaves_nothing_when_not_committed(tmp_path):
    path = tmp_path / "cls00000-00000.tar"
    with pytest.raises(RuntimeError):
        with TarShardWriter(str(path)) as writer:
            writer.add("a", "png", b"x" * 10, 0)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_same_input_packs_byte_identical(tmp_path):
    digests = []
    for name in ("a.tar", "b.tar"):
        with TarShardWriter(str(tmp_path / name)) as writer:
            writer.add("k", "png", b"data", 3)
            writer.commit()
        digests.append(writer.sha256)
    assert digests[0] == digests[1]


def test_members_carry_fixed_metadata_not_the_clock(tmp_path):
    """Byte-identical packs must not depend on writing within the same second: every member has
    mtime 0, mode 0644 and no owner, whatever the time and the user."""
    path = tmp_path / "a.tar"
    with TarShardWriter(str(path)) as writer:
        writer.add("k", "png", b"data", 3)
        writer.commit()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["k.png", "k.cls"]
    for member in members:
        assert (member.mtime, member.mode, member.uid, member.gid, member.uname, member.gname) == \
            (0, 0o644, 0, 0, "", ""), member.name
