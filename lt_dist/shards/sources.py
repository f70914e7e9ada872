"""Where images come from: a folder tree, a benchmark split list, or IDX files.

Each reader returns a Source: class names plus, per split, a list of Items in a
stable order. An Item points at an image file (folder, list) or carries the raw
pixels (IDX); reading its bytes is images.load_image's job.
"""
from __future__ import annotations

import gzip
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lt_dist.errors import UserInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IDX_IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
IDX_SPLITS = {"train": "train", "test": "t10k"}  # our split name -> IDX file prefix
# Above every real label space (iNaturalist 2018: 8,142; ImageNet-21k: 21,841): a label or
# class count past it is a typo, refused before anything is sized by it.
MAX_CLASSES = 1_000_000


@dataclass(frozen=True)
class Item:
    """One source image: an id that names it, its label, and where its bytes are."""

    id: str  # relative path, or "<split>/<index>" for IDX
    label: int
    path: str | None = None  # image file on disk (folder and list sources)
    pixels: np.ndarray | None = field(default=None, compare=False)  # (H, W) uint8, IDX
    origin: str = ""  # where the item was declared, for error messages


@dataclass
class Source:
    """Everything a pack needs to know about the input."""

    kind: str  # "folder" | "list" | "idx"
    location: str  # the folder, list file or IDX folder as given
    class_names: list[str]
    splits: dict[str, list[Item]]


def folder_source(root: str, split: str) -> Source:
    """ROOT/<class name>/<image> (torchvision ImageFolder); labels = sorted class names."""
    if not os.path.isdir(root):
        raise UserInputError(f"image folder {root!r} does not exist or is not a folder")
    class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    _check_no_loops(root, class_names)
    if not class_names:
        raise UserInputError(f"image folder {root!r} has no class sub-folders (expected ROOT/<class>/<image>)")
    items = []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        files = sorted(_image_files(class_dir))
        if not files:
            raise UserInputError(f"class {name!r} (label {label}) has no images in {class_dir!r}")
        for rel in files:
            rel_id = f"{name}/{rel}"
            items.append(Item(rel_id, label, os.path.join(root, rel_id), origin=os.path.join(root, rel_id)))
    return Source("folder", root, class_names, {split: items})


def _check_no_loops(root: str, class_names: list[str]) -> None:
    """Refuse a class folder that is (a link to) the root or one of its parents: its walk
    would take in every other class's images, or the whole tree above."""
    real_root = os.path.realpath(root)
    for name in class_names:
        real = os.path.realpath(os.path.join(root, name))
        if real_root == real or real_root.startswith(real.rstrip(os.sep) + os.sep):
            raise UserInputError(f"class folder {os.path.join(root, name)!r} links to {real!r}, which "
                                 f"contains the image folder itself; remove the link")


def _image_files(class_dir: str) -> list[str]:
    """Image files under a class folder (recursively), relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, name), class_dir))
    return found


def check_num_classes(num_classes: int, what: str = "--num-classes") -> int:
    """num_classes if it is in [1, MAX_CLASSES]; UserInputError naming it if not."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise UserInputError(f"{what} {num_classes} is out of range: 1 to {MAX_CLASSES:,}")
    return num_classes


def read_split_list(list_path: str, num_classes: int | None = None) -> list[tuple[str, int, int]]:
    """Parse a split list: lines "relative/path label"; returns (path, label, line_no).

    Path and label are separated by the last run of whitespace; a UTF-8 byte-order
    mark is ignored. Raises UserInputError naming the file and line for a malformed
    line, bytes that are not UTF-8, a label that is not an integer, or a label
    outside [0, num_classes) (or past MAX_CLASSES).
    """
    if not os.path.isfile(list_path):
        what = "is a folder, not a file" if os.path.isdir(list_path) else "does not exist"
        raise UserInputError(f"split list {list_path!r} {what}")
    limit = num_classes if num_classes is not None else MAX_CLASSES
    entries = []
    with open(list_path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
            except UnicodeDecodeError as error:
                raise UserInputError(f"{list_path}:{line_no}: not UTF-8 text (byte {raw[error.start]:#04x} "
                                     f"at column {error.start + 1})") from None
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(None, 1)
            if len(parts) != 2:
                raise UserInputError(f"{list_path}:{line_no}: expected 'relative/path label', got {text!r}")
            path, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise UserInputError(f"{list_path}:{line_no}: label {label_text!r} is not an integer") from None
            if not 0 <= label < limit:
                raise UserInputError(f"{list_path}:{line_no}: label {label} is out of range [0, {limit:,})")
            entries.append((path, label, line_no))
    if not entries:
        raise UserInputError(f"split list {list_path!r} has no entries")
    return entries


def list_source(list_path: str, root: str, split: str, num_classes: int | None = None,
                class_names: list[str] | None = None) -> Source:
    """A benchmark split list (ImageNet-LT, Places-LT, iNaturalist) with paths under root."""
    if num_classes is not None:
        check_num_classes(num_classes)
    if class_names is not None:
        num_classes = num_classes or len(class_names)
    entries = read_split_list(list_path, num_classes)
    num_classes = num_classes or max(label for _, label, _ in entries) + 1
    present = Counter(label for _, label, _ in entries)
    if len(present) < num_classes:  # found without walking range(num_classes): it may be huge
        first = next(label for label in range(num_classes) if present[label] == 0)
        raise UserInputError(f"{list_path}: class {first} has no images ({num_classes - len(present):,} of "
                             f"{num_classes:,} classes are empty; every class needs at least one)")
    items = [Item(path, label, os.path.join(root, path), origin=f"{list_path}:{line_no}")
             for path, label, line_no in entries]
    names = class_names or [str(label) for label in range(num_classes)]
    if len(names) != num_classes:
        raise UserInputError(f"{len(names)} class names given but {list_path} has {num_classes} classes")
    return Source("list", list_path, names, {split: items})


def read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Read one IDX file (gzip or not) as a uint8 array."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise UserInputError(f"{path}: IDX magic {magic:#010x}, expected {expected_magic:#010x}")
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim:
        raise UserInputError(f"{path}: IDX header is cut short ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):  # python ints: a garbage header cannot overflow
        raise UserInputError(f"{path}: header says shape {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _find_idx(folder: str, prefix: str, kind: str) -> str:
    """Path of e.g. train-images-idx3-ubyte[.gz] in folder."""
    stem = f"{prefix}-{kind}"
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise UserInputError(f"IDX folder {folder!r} has no {stem}[.gz]")


def idx_source(folder: str, class_names: list[str] | None = None) -> Source:
    """The four IDX files of MNIST / Fashion-MNIST: splits train and test."""
    if not os.path.isdir(folder):
        raise UserInputError(f"IDX folder {folder!r} does not exist")
    splits = {}
    for split, prefix in IDX_SPLITS.items():
        images = read_idx(_find_idx(folder, prefix, "images-idx3-ubyte"), IDX_IMAGE_MAGIC)
        labels = read_idx(_find_idx(folder, prefix, "labels-idx1-ubyte"), IDX_LABEL_MAGIC)
        if len(images) != len(labels):
            raise UserInputError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
        width = len(str(len(images) - 1))
        splits[split] = [Item(f"{split}/{index:0{width}d}", int(label), pixels=images[index],
                              origin=f"{folder} {split}[{index}]")
                         for index, label in enumerate(labels)]
    num_classes = int(max(item.label for item in splits["train"])) + 1
    names = class_names or [str(label) for label in range(num_classes)]
    if len(names) != num_classes:
        raise UserInputError(f"{len(names)} class names given but {folder} has {num_classes} classes")
    return Source("idx", folder, names, splits)
