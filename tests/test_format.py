import hashlib
import os
import tarfile

import pytest

from lt_dist.shards.format import (TarShardWriter, _HashingFile, file_sha256, make_key, padded, parse_shard_name,
                                  shard_name)


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


@pytest.mark.parametrize("sample_id, key", [
    ("a\\b\\c.jpg", "a/b/c"),  # Windows separators in a list file
    ("a.b/c.d/e.f.jpg", "a.b/c.d/e_f"),  # only the last component loses its dots
    ("img.v2.jpg", "img_v2"),  # no folder: no leading slash
    ("./img.jpg", "img"),
    ("x y.jpg", "x_y"),
    ("Xray/X1.jpg", "Xray/X1"),  # only a leading "./" (or "/") goes, not other leading letters
])
def test_make_key_normalises_separators_and_only_the_base_name(sample_id, key):
    assert make_key(sample_id) == key


@pytest.mark.parametrize("size, expected", [(0, 0), (1, 512), (511, 512), (512, 512), (513, 1024), (1024, 1024)])
def test_padded_rounds_up_to_whole_512_byte_blocks(size, expected):
    assert padded(size) == expected


def test_hashing_file_counts_and_hashes_every_write(tmp_path):
    path = tmp_path / "out.bin"
    sink = _HashingFile(str(path))
    assert sink.writable()
    for chunk in (b"abc", b"", b"defgh", bytearray(b"ij")):
        assert sink.write(chunk) == len(chunk)
    assert sink.tell() == 10
    sink.close()
    assert sink.hexdigest() == hashlib.sha256(b"abcdefghij").hexdigest()
    assert path.read_bytes() == b"abcdefghij"


def test_writer_starts_empty_and_writes_its_temporary_file_beside_the_target(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    with TarShardWriter(str(folder / "cls00000-00000.tar")) as writer:
        assert (writer.count, writer.sha256, writer.bytes) == (0, "", 0)
        # the rename into place must stay on one file system: the temporary file is a hidden sibling
        temp = writer.temp_path
        assert os.path.dirname(temp) == str(folder) and os.path.basename(temp).startswith(".")
        assert os.path.exists(temp) and not (folder / "cls00000-00000.tar").exists()
        for index in range(5):
            writer.add(f"k{index}", "png", b"x", 0)
        assert writer.count == 5
        writer.commit()
    assert not os.path.exists(temp) and writer.count == 5


def test_long_and_non_ascii_keys_are_stored_exactly(tmp_path):
    """PAX headers carry names over 100 bytes and UTF-8 names; ustar and GNU tar would mangle or refuse them."""
    path = tmp_path / "a.tar"
    keys = ["d" * 60 + "/" + "e" * 80, "classe/éléphant_03"]
    with TarShardWriter(str(path)) as writer:
        for key in keys:
            writer.add(key, "jpg", b"img", 7)
        writer.commit()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [f"{k}.{e}" for k in keys for e in ("jpg", "cls")]
    assert all(m.pax_headers.get("path") == m.name for m in members)


def test_member_bytes_is_what_each_member_adds_to_the_archive(tmp_path):
    """The sum of member_bytes over every member is where the archive's end-of-file zeros start."""
    path = tmp_path / "a.tar"
    # the last key is a Latin-1 file name as os.walk returns it on a UTF-8 system (surrogate escapes):
    # PAX then stores its raw bytes under hdrcharset=BINARY
    samples = [("short", b"a" * 10), ("p" * 120, b"b" * 512), ("nön-ascii", b"c" * 513), ("caf\udce9", b"d" * 5)]
    total = 0
    with TarShardWriter(str(path)) as writer:
        for key, data in samples:
            total += writer.member_bytes(f"{key}.jpg", len(data)) + writer.member_bytes(f"{key}.cls", 1)
            writer.add(key, "jpg", data, 4)
        writer.commit()
    raw = path.read_bytes()
    assert raw[total - 512] == ord("4")  # the last member's data: the label of the last sample
    assert raw[total - 511: total] == bytes(511) and raw[total:] == bytes(len(raw) - total)
    assert len(raw) - total >= 2 * 512 and len(raw) % (20 * 512) == 0


def test_projected_size_is_exact_at_a_record_boundary(tmp_path):
    """One sample whose members end 1,024 bytes before a 10,240-byte record boundary: the archive is
    exactly one record, and one more byte would need a second record."""
    path = tmp_path / "a.tar"
    with TarShardWriter(str(path)) as writer:
        # header 512 + data 7,680 + header 512 + label 512 = 9,216; plus the two end blocks = 10,240
        predicted = writer.projected_size(writer.member_bytes("k.jpg", 7680) + writer.member_bytes("k.cls", 1))
        writer.add("k", "jpg", b"z" * 7680, 1)
        assert writer.projected_size() == writer.projected_size(0) == predicted == 10240
        assert writer.projected_size(1) == 20480
        writer.commit()
    assert path.stat().st_size == writer.bytes == 10240


def test_projected_size_matches_the_file_after_every_add(tmp_path):
    for num_samples in range(6):
        path = tmp_path / f"{num_samples}.tar"
        with TarShardWriter(str(path)) as writer:
            for index in range(num_samples):
                writer.add(f"k{index}", "jpg", b"q" * (3000 * index + 1), 2)
            projected = writer.projected_size()
            writer.commit()
        assert path.stat().st_size == projected, num_samples
