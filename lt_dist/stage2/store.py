"""Stored features: Arrow IPC files that readers memory-map (trials on one machine share pages).

features/NAME/
    train.arrow, val.arrow, test.arrow   one row per sample: row (int64, manifest row),
                                         key (string), label (int64),
                                         feature (fixed_size_list<float32>[D]); one record
                                         batch, so the (N, D) matrix is one zero-copy view
    classifier.arrow                     one row per class: class_name, train_count (int64),
                                         bias (float32), weight (fixed_size_list<float32>[D])
    features.json                        splits, dimensions, counts, source run and data, and
                                         the sha256 of the best_model.pt that made each split
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lt_dist.errors import UserInputError

INDEX = "features.json"
CLASSIFIER = "classifier.arrow"


def _write_ipc(path: str, table: pa.Table) -> None:
    temp = f"{path}.tmp-{os.getpid()}"
    try:
        with pa.OSFile(temp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(table.num_rows, 1))
    except BaseException:  # Ctrl-C mid-write included: no half-written file stays behind
        if os.path.exists(temp):
            os.remove(temp)
        raise
    os.replace(temp, path)


def _matrix_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def write_split(path: str, rows: np.ndarray, keys: list[str], labels: np.ndarray, features: np.ndarray) -> None:
    """Write one split's features, sorted by manifest row (the same order whatever the world size)."""
    order = np.argsort(rows, kind="stable")
    table = pa.table({"row": pa.array(np.asarray(rows, dtype=np.int64)[order]),
                      "key": pa.array([keys[i] for i in order], pa.string()),
                      "label": pa.array(np.asarray(labels, dtype=np.int64)[order]),
                      "feature": _matrix_column(np.asarray(features)[order])})
    _write_ipc(path, table)


def write_classifier(folder: str, weight: np.ndarray, bias: np.ndarray, train_counts: np.ndarray,
                     class_names: list[str]) -> None:
    """The stage-1 classifier (C, D) + (C,) and the training class counts."""
    table = pa.table({"class_name": pa.array(class_names, pa.string()),
                      "train_count": pa.array(np.asarray(train_counts, dtype=np.int64)),
                      "bias": pa.array(np.asarray(bias, dtype=np.float32)),
                      "weight": _matrix_column(weight)})
    _write_ipc(os.path.join(folder, CLASSIFIER), table)


def write_index(folder: str, info: dict) -> None:
    """features.json by temp file + rename (a reader sees the old index or the new one)."""
    path = os.path.join(folder, INDEX)
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=1)
    os.replace(temp, path)


def read_index(folder: str) -> dict | None:
    """features.json of a folder, None when there is none; UserInputError when it is unreadable."""
    path = os.path.join(folder, INDEX)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        if not isinstance(info, dict) or not isinstance(info.get("splits", {}), dict):
            raise ValueError("not an object with splits")
    except (OSError, ValueError) as error:
        raise UserInputError(f"{path!r} is not a readable features index ({error})") from None
    return info


def check_provenance(folder: str, info: dict | None, present: list[str]) -> None:
    """Every stored split must come from the checkpoint the index records (its sha256).

    Folders whose index records no checkpoint hash (features written by other tools, or
    synthetic ones) are taken as they are.
    """
    if info is None or "ckpt_sha256" not in info:
        return
    sha = info["ckpt_sha256"]
    for split in present:
        entry = info.get("splits", {}).get(split)
        if not isinstance(entry, dict):
            raise UserInputError(f"{folder}/{split}.arrow is not recorded in {INDEX} (an unfinished "
                                 f"`lt_dist extract`?): extract {split} again")
        if entry.get("ckpt_sha256") != sha:
            raise UserInputError(f"{folder}/{split}.arrow comes from checkpoint sha256 "
                                 f"{str(entry.get('ckpt_sha256'))[:12]}, the classifier from {str(sha)[:12]}: "
                                 f"features of different checkpoints are never mixed")


@dataclass
class StoredSplit:
    """A memory-mapped split: features (N, D) float32 view, labels (N,), keys."""

    features: np.ndarray
    labels: np.ndarray
    keys: pa.ChunkedArray


def _read_ipc(path: str) -> pa.Table:
    if not os.path.isfile(path):
        raise UserInputError(f"{path!r} does not exist")
    try:
        return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    except (pa.ArrowException, OSError) as error:
        raise UserInputError(f"{path!r} is not a readable Arrow features file ({str(error)[:120]})") from None


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """(N, D) float32 zero-copy view of a one-chunk fixed-size-list column."""
    chunk = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = chunk.values.to_numpy(zero_copy_only=column.num_chunks == 1)
    return values.reshape(len(chunk), chunk.type.list_size)


def read_split(folder: str, split: str) -> StoredSplit:
    """Memory-map features/NAME/<split>.arrow."""
    path = os.path.join(folder, f"{split}.arrow")
    table = _read_ipc(path)
    try:
        return StoredSplit(_matrix(table.column("feature")), table.column("label").to_numpy(), table.column("key"))
    except (KeyError, AttributeError, pa.ArrowException) as error:
        raise UserInputError(f"{path!r} is not a features table of `lt_dist extract` ({error})") from None


def read_classifier(folder: str) -> dict:
    """{"weight" (C, D), "bias" (C,), "train_counts" (C,), "class_names", "cosine_scale"} of the stage-1
    classifier; cosine_scale is None for a linear head (features.json says which head it was)."""
    path = os.path.join(folder, CLASSIFIER)
    if not os.path.isfile(path):
        raise UserInputError(f"{folder!r} has no stage-1 classifier ({CLASSIFIER}); run `lt_dist extract` "
                             f"with the stage-1 checkpoint")
    table = _read_ipc(path)
    index = read_index(folder) or {}
    try:
        return {"weight": _matrix(table.column("weight")), "bias": table.column("bias").to_numpy(),
                "train_counts": table.column("train_count").to_numpy(),
                "class_names": table.column("class_name").to_pylist(),
                "cosine_scale": index.get("cosine_scale") if index.get("head") == "cosine" else None}
    except (KeyError, AttributeError, pa.ArrowException) as error:
        raise UserInputError(f"{path!r} is not a classifier table of `lt_dist extract` ({error})") from None


def read_train_views(folder: str) -> tuple[np.ndarray, ...]:
    """The (N, D) matrices of train.view000.arrow, train.view001.arrow, ... (memory-mapped; () if none).

    Each must hold train.arrow's rows in the same order (both are sorted by manifest row)."""
    names = sorted(name for name in os.listdir(folder) if name.startswith("train.view") and name.endswith(".arrow"))
    if not names:
        return ()
    train_rows = _read_ipc(os.path.join(folder, "train.arrow")).column("row").to_numpy()
    views = []
    for name in names:
        table = _read_ipc(os.path.join(folder, name))
        if not np.array_equal(table.column("row").to_numpy(), train_rows):
            raise UserInputError(f"{os.path.join(folder, name)!r} does not hold train.arrow's rows: extract again")
        views.append(_matrix(table.column("feature")))
    return tuple(views)


def load_features(folder: str, splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[dict, dict]:
    """({split: StoredSplit} for the splits present, classifier), checked against each other.

    Raises UserInputError naming the split when dimensions or class counts disagree.
    """
    if not os.path.isdir(folder):
        raise UserInputError(f"features folder {folder!r} does not exist")
    present = [split for split in splits if os.path.isfile(os.path.join(folder, f"{split}.arrow"))]
    check_provenance(folder, read_index(folder), present)
    classifier = read_classifier(folder)
    num_classes, dim = classifier["weight"].shape
    stored = {}
    for split in splits:
        if not os.path.isfile(os.path.join(folder, f"{split}.arrow")):
            continue
        data = read_split(folder, split)
        if data.features.shape[1] != dim:
            raise UserInputError(f"{split} features are {data.features.shape[1]}-d but the classifier is {dim}-d")
        if len(data.labels) and int(data.labels.min()) < 0:
            raise UserInputError(f"{split} has label {int(data.labels.min())}; labels are class indices >= 0")
        if len(data.labels) and int(data.labels.max()) >= num_classes:
            raise UserInputError(f"{split} has label {int(data.labels.max())} but the classifier has "
                                 f"{num_classes} classes")
        stored[split] = data
    if "train" not in stored:
        raise UserInputError(f"{folder!r} has no train.arrow: stage 2 trains on the training features")
    return stored, classifier
