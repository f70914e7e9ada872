"""Every user mistake on the data commands (pack, stats, verify, sample-stats) ends in
one line naming the bad value and exit 2 (verify: exit 1, its "does not check out"
status), with no traceback, and leaves everything outside the command's output as it
was. Each case is one row of CASES, run as a real `lt_dist` process in a fresh copy of
a small workspace:

    images/             3 class folders of 4 JPEGs
    shards/tiny/train   packed from images/ (3 per class); shards/tiny/val (1 per class)
    shards/keep/        a folder of the user's own that no command may touch
    list.txt            a valid split list over images/
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, make_image_folder


@dataclass(frozen=True)
class Case:
    """One bad input: the setup that makes it, the command, and what it must say."""

    name: str
    args: list[str]  # "{ws}" is replaced by the workspace path
    names: str  # the value the message must name
    setup: Callable[[Path], None] = lambda ws: None
    code: int = 2
    may_change: tuple[str, ...] = field(default=())  # paths (relative to ws) the command may write


def write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def remove(rel: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).unlink()


def link_root_into_a_class(ws: Path) -> None:
    (ws / "images" / "loop").symlink_to(ws / "images")


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        for one in setups:
            one(ws)
    return setup


PACK = ["pack", "{ws}/images", "--no-progress", "--out"]
LIST = ["pack", "--list", "{ws}/bad.txt", "--root", "{ws}/images", "--no-progress", "--out", "{ws}/shards/new"]
SAMPLE = ["sample-stats", "{ws}/shards/tiny", "--draws", "100"]
CASES = [
    # Data loss: split names and --overwrite.
    Case("split dotdot", [*PACK, "{ws}/shards/x", "--split", "..", "--overwrite"], "'..'"),
    Case("split empty", [*PACK, "{ws}/shards/tiny", "--split", "", "--overwrite"], "''"),
    Case("split is a path", [*PACK, "{ws}/shards/x", "--split", "a/b"], "'a/b'"),
    Case("split hidden", [*PACK, "{ws}/shards/x", "--split", ".git"], "'.git'"),
    Case("overwrite a user's folder", [*PACK, "{ws}/shards", "--split", "keep", "--overwrite"], "notes.txt"),
    Case("out is a file", [*PACK, "{ws}/list.txt"], "list.txt"),
    Case("out cannot be made", [*PACK, "/proc/lt-dist-no/out"], "/proc/lt-dist-no"),
    Case("other class names beside", [*PACK, "{ws}/shards/tiny", "--split", "test"], "'train'",
         setup=lambda ws: shutil.move(ws / "images" / "class_02", ws / "images" / "zebra")),
    Case("class folder links to root", [*PACK, "{ws}/shards/x"], "loop", setup=link_root_into_a_class),
    Case("image folder missing", ["pack", "{ws}/nope", "--out", "{ws}/shards/x"], "nope"),
    # Sizes from the user, checked before anything is sized by them.
    Case("huge label", LIST, "99999999999999999999",
         setup=write("bad.txt", "class_00/img_0000.jpg 0\nclass_00/img_0001.jpg 99999999999999999999\n")),
    Case("huge num-classes", [*LIST, "--num-classes", "10000000000"], "10000000000",
         setup=write("bad.txt", "class_00/img_0000.jpg 0\n")),
    Case("zero num-classes", [*LIST, "--num-classes", "0"], "--num-classes 0",
         setup=write("bad.txt", "class_00/img_0000.jpg 0\n")),
    Case("label past the classes", LIST, "class 1", setup=write("bad.txt", "class_00/img_0000.jpg 0\n"
                                                                          "class_00/img_0001.jpg 500000\n")),
    Case("negative label", LIST, "-1", setup=write("bad.txt", "class_00/img_0000.jpg -1\n")),
    Case("fractional label", LIST, "'1.5'", setup=write("bad.txt", "class_00/img_0000.jpg 1.5\n")),
    Case("list not utf-8", LIST, "bad.txt:2", setup=write("bad.txt", b"class_00/img_0000.jpg 0\n\xff\xfe 1\n")),
    Case("list is a folder", [*LIST[:2], "{ws}/images", *LIST[3:]], "images"),
    Case("list missing", LIST, "bad.txt"),
    Case("class names not utf-8", [*PACK, "{ws}/shards/x", "--class-names", "@{ws}/names.txt"], "names.txt",
         setup=write("names.txt", b"a\n\xff\nc\n")),
    Case("workers zero", [*PACK, "{ws}/shards/x", "--workers", "0"], "--workers 0"),
    Case("workers huge", [*PACK, "{ws}/shards/x", "--workers", "100000"], "--workers 100000"),
    Case("workers fractional", [*PACK, "{ws}/shards/x", "--workers", "1.5"], "'1.5'"),
    Case("shard count zero", [*PACK, "{ws}/shards/x", "--shard-count", "0"], "--shard-count"),
    Case("shard size garbage", [*PACK, "{ws}/shards/x", "--shard-size", "lots"], "'lots'"),
    Case("imbalance nan", [*PACK, "{ws}/shards/x", "--profile", "exp", "--imbalance", "nan"], "nan"),
    Case("imbalance below one", [*PACK, "{ws}/shards/x", "--profile", "exp", "--imbalance", "0.5"], "0.5"),
    Case("alpha inf", [*PACK, "{ws}/shards/x", "--profile", "pareto", "--alpha", "inf"], "inf"),
    Case("max per class huge", [*PACK, "{ws}/shards/x", "--profile", "exp", "--max-per-class",
                                "1000000000000"], "1000000000000"),
    Case("val per class negative", [*PACK, "{ws}/shards/x", "--val-per-class", "-1"], "-1"),
    Case("seed negative", [*PACK, "{ws}/shards/x", "--val-per-class", "1", "--seed", "-1"], "-1"),
    Case("idx garbage", ["pack", "--idx", "{ws}/idx", "--out", "{ws}/shards/x"], "train-images-idx3-ubyte",
         setup=both(write("idx/train-images-idx3-ubyte", b"\x00\x00\x08\x03garbage"),
                    write("idx/train-labels-idx1-ubyte", b"\x00\x00\x08\x01"))),
    # stats
    Case("stats huge label", ["stats", "{ws}/bad.txt"], "99999999999999999999",
         setup=write("bad.txt", "a.jpg 99999999999999999999\n")),
    Case("stats counts not json", ["stats", "--counts", "{ws}/c.json"], "c.json", setup=write("c.json", "[1, 2")),
    Case("stats counts not counts", ["stats", "--counts", "{ws}/c.json"], "'a'", setup=write("c.json", '[1, "a"]')),
    Case("stats counts fractional", ["stats", "--counts", "{ws}/c.json"], "2.5", setup=write("c.json", "[1, 2.5]")),
    Case("stats unfinished val", ["stats", "{ws}/shards/tiny"], "val",
         setup=remove("shards/tiny/val/manifest.parquet")),
    Case("stats garbage dataset.json", ["stats", "{ws}/shards/tiny/train"], "dataset.json",
         setup=write("shards/tiny/train/dataset.json", "{not json")),
    Case("stats dataset.json not utf-8", ["stats", "{ws}/shards/tiny/train"], "dataset.json",
         setup=write("shards/tiny/train/dataset.json", b"\xff\xfe{}")),
    Case("stats counts of another type", ["stats", "{ws}/shards/tiny/train"], "dataset.json",
         setup=write("shards/tiny/train/dataset.json", '{"class_names": ["a"], "samples_per_class": ["x"]}')),
    Case("stats garbage shards.parquet", ["stats", "{ws}/shards/tiny/train"], "shards.parquet",
         setup=write("shards/tiny/train/shards.parquet", "not parquet")),
    Case("stats missing", ["stats", "{ws}/shards/none"], "shards/none"),
    # verify: a damaged dataset is its finding (exit 1), named on stdout
    Case("verify unfinished val", ["verify", "{ws}/shards/tiny"], "unfinished", code=1,
         setup=remove("shards/tiny/val/manifest.parquet")),
    Case("verify garbage manifest", ["verify", "{ws}/shards/tiny"], "manifest.parquet", code=1,
         setup=write("shards/tiny/train/manifest.parquet", "PAR1 nonsense")),
    Case("verify missing shard table", ["verify", "{ws}/shards/tiny/val"], "shards.parquet", code=1,
         setup=remove("shards/tiny/val/shards.parquet")),
    Case("verify missing", ["verify", "{ws}/shards/none"], "shards/none"),
    # sample-stats
    Case("draws huge", [*SAMPLE, "--draws", "3000000000"], "3000000000"),
    Case("draws zero", [*SAMPLE, "--draws", "0"], "--draws 0"),
    Case("epoch past epochs", [*SAMPLE, "--epoch", "5", "--epochs", "2"], "--epoch 5"),
    Case("sampler nan", [*SAMPLE, "--sampler", "nan"], "'nan'"),
    Case("sampler above one", [*SAMPLE, "--sampler", "2"], "'2'"),
    Case("sampler unknown", [*SAMPLE, "--sampler", "bogus"], "bogus"),
    Case("sample-stats seed negative", [*SAMPLE, "--seed", "-1"], "-1"),
    Case("sample-stats unfinished", [*SAMPLE[:1], "{ws}/shards/tiny", "--split", "val"], "unfinished",
         setup=remove("shards/tiny/val/manifest.parquet")),
    Case("cache limit not a size", [*SAMPLE, "--cache-limit", "12Q"], "--cache-limit '12Q'"),
    Case("storage options not JSON", ["verify", "{ws}/shards/tiny", "--storage-options", "{anon: 1}"],
         "--storage-options is not valid JSON"),
    Case("prefetch zero", ["stats", "{ws}/shards/tiny", "--prefetch", "0"], "--prefetch must be"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The workspace every case starts from (copied, never changed)."""
    ws = tmp_path_factory.mktemp("workspace")
    make_image_folder(ws / "images", [4, 4, 4])
    run(["pack", str(ws / "images"), "--out", str(ws / "shards" / "tiny"), "--val-per-class", "1",
         "--no-progress"], ws, check=True)
    (ws / "shards" / "keep").mkdir()
    (ws / "shards" / "keep" / "notes.txt").write_text("the user's own notes\n")
    (ws / "list.txt").write_text("".join(f"class_0{j}/img_000{i}.jpg {j}\n" for j in range(3) for i in range(4)))
    return ws


def run(args: list[str], cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LT_DIST_TRACEBACK", None)
    result = subprocess.run([sys.executable, "-m", "lt_dist.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def tree_digest(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    """{relative path: sha256 of content (or link target, or 'dir')} of everything under root."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if any(path == s or s in path.parents for s in skip):
                continue
            rel = str(path.relative_to(root))
            if path.is_symlink():
                digest[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                digest[rel] = "dir"
            else:
                digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_one_line_exit_code_nothing_else_touched(case: Case, base: Path, tmp_path: Path):
    ws = tmp_path / "ws"
    shutil.copytree(base, ws, symlinks=True)
    case.setup(ws)
    before = tree_digest(ws, ())
    result = run([arg.replace("{ws}", str(ws)) for arg in case.args], ws)
    said = result.stderr if case.code == 2 else result.stdout
    lines = [line for line in said.splitlines() if line.strip()]
    assert result.returncode == case.code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    if case.code == 2:
        assert len(lines) == 1 and not result.stdout, (result.stdout, result.stderr)
    failed = [line for line in lines if "FAILED" in line]
    assert any(case.names in line for line in (lines if case.code == 2 else failed)), said
    assert tree_digest(ws, tuple(ws / rel for rel in case.may_change)) == before


def test_internal_error_is_one_line_and_traceback_on_request(tmp_path: Path):
    """A bug (here: a library function made to fail) is one 'internal error' line with
    exit 1; LT_DIST_TRACEBACK=1 shows the traceback."""
    (tmp_path / "c.json").write_text("[5, 3, 1]")
    code = ("import sys, lt_dist.shards.stats as stats, lt_dist.cli as cli\n"
            "def broken(*args, **kwargs): raise RuntimeError('a bug')\n"
            "stats.count_stats = broken\n"
            "sys.exit(cli.main(['stats', '--counts', 'c.json']))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LT_DIST_TRACEBACK", None)
    quiet = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    loud = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "LT_DIST_TRACEBACK": "1"},
                          capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 1 and quiet.stderr.splitlines() == [
        "lt_dist stats: internal error: RuntimeError: a bug (LT_DIST_TRACEBACK=1 shows the traceback)"]
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "a bug" in loud.stderr


def test_list_with_byte_order_mark_and_tabs_packs(base: Path, tmp_path: Path):
    """A list saved by an editor that writes a BOM and tabs is read, not refused."""
    listing = tmp_path / "bom.txt"
    text = (base / "list.txt").read_text().replace(" ", "\t")
    listing.write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = run(["pack", "--list", listing, "--root", base / "images", "--out", tmp_path / "out",
                  "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train: 12 images" in result.stdout
