import pytest

from conftest import run_cli
from lt_dist.shards.verify import verify_split


@pytest.fixture
def split(image_folder, tmp_path, capsys):
    out = tmp_path / "ds"
    status, _, err = run_cli(["pack", image_folder, "--out", out, "--no-progress"], capsys)
    assert status == 0, err
    return out / "train"


def test_clean_split_verifies_with_decode(split, capsys):
    report = verify_split(str(split), decode=True)
    assert report.ok and report.num_samples == 30 and report.decoded == 30 and report.num_shards == 5
    status, out, _ = run_cli(["verify", split.parent, "--decode"], capsys)
    assert status == 0 and "OK" in out


def test_flipped_byte_fails_naming_the_shard(split, capsys):
    shard = split / "cls00002-00000.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    status, out, _ = run_cli(["verify", split], capsys)
    assert status == 1 and "cls00002-00000.tar: sha256 does not match" in out


def test_missing_shard_is_named(split, capsys):
    (split / "cls00004-00000.tar").unlink()
    status, out, _ = run_cli(["verify", split], capsys)
    assert status == 1 and "cls00004-00000.tar: shard file is missing" in out


def test_corrupt_image_found_only_by_decode(split, capsys):
    import pyarrow.parquet as pq

    row = pq.read_table(split / "manifest.parquet").to_pylist()[0]
    shard = split / row["shard"]
    data = bytearray(shard.read_bytes())
    data[row["offset"] + 2: row["offset"] + row["size"]] = b"\0" * (row["size"] - 2)
    shard.write_bytes(bytes(data))
    report = verify_split(str(split), decode=True)
    assert any(f"{row['key']} does not decode" in p for p in report.problems)


def test_not_a_dataset(tmp_path, capsys):
    status, _, err = run_cli(["verify", tmp_path], capsys)
    assert status == 2 and "holds no packed split" in err


def test_decode_names_images_the_two_decoders_read_differently(tmp_path, capsys):
    """--check none trusts the bytes (as packs before format conversion did): a GIF
    named .jpg gets in, and verify --decode names it."""
    import io

    from PIL import Image

    for label in range(2):
        folder = tmp_path / "images" / f"c{label}"
        folder.mkdir(parents=True)
        buffer = io.BytesIO()
        Image.new("P", (8, 8), 3).save(buffer, format="GIF")
        (folder / "x.jpg").write_bytes(buffer.getvalue())
    out = tmp_path / "ds"
    status, _, err = run_cli(["pack", tmp_path / "images", "--out", out, "--check", "none", "--no-progress"], capsys)
    assert status == 0, err
    assert run_cli(["verify", out], capsys)[0] == 0  # the bytes are what the manifest says
    status, out_text, _ = run_cli(["verify", out, "--decode"], capsys)
    assert status == 1 and "c0/x is GIF (P), which DALI and torchvision do not decode alike" in out_text
