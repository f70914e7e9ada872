"""`lt_dist predict`: image files -> top-k class names and probabilities with an exported model.

Images are decoded and transformed with the model's eval preset by the loader's decoders
("torchvision": PIL in this process, the reference; "dali": DALI, on the GPU when there
is one), batched, and run through the model; softmax over the logits gives the
probabilities. A file that cannot be read or decoded is reported and skipped: one bad
image never aborts the others (a DALI batch that fails is decoded again image by image
to find the bad ones).
"""
from __future__ import annotations

import csv
import os
import sys

import torch

from lt_dist.data.tvdecode import decode_sample
from lt_dist.engine.evaluate import model_preset
from lt_dist.errors import UserInputError


def collect_paths(images: list[str], folder: str | None, list_file: str | None) -> list[str]:
    """Image paths from the arguments, every file under folder (sorted), and list_file's lines."""
    paths = list(images)
    if folder is not None:
        if not os.path.isdir(folder):
            raise UserInputError(f"--folder {folder!r} is not a folder")
        paths += sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
    if list_file is not None:
        if not os.path.isfile(list_file):
            raise UserInputError(f"--list {list_file!r} does not exist")
        with open(list_file, encoding="utf-8") as handle:
            paths += [line.strip() for line in handle if line.strip()]
    if not paths:
        raise UserInputError("no images: give image files, --folder DIR or --list FILE")
    return paths


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _decode_torchvision(encoded: list[bytes], preset) -> list[torch.Tensor | Exception]:
    """Each image decoded alone: a tensor, or the exception PIL raised for it."""
    decoded = []
    for data in encoded:
        try:
            decoded.append(decode_sample(data, preset, torch.Generator()))
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for bad files
            decoded.append(error)
    return decoded


def _decode_dali(encoded: list[bytes], preset) -> list[torch.Tensor | Exception]:
    """The batch through DALI; if DALI refuses it, each image alone, to name the bad ones."""
    from lt_dist.data.dali import DaliDecoder

    def run(batch: list[bytes]) -> torch.Tensor:
        images, _ = next(iter(DaliDecoder([[(data, 0) for data in batch]], preset, len(batch), prefetch=1)))
        return images

    try:
        return list(run(encoded).unbind(0))
    except RuntimeError:  # DALI reports an undecodable image as a RuntimeError for the whole batch
        if len(encoded) == 1:
            raise
    decoded = []
    for data in encoded:
        try:
            decoded.append(run([data])[0])
        except RuntimeError as error:
            decoded.append(ValueError(str(error).strip().splitlines()[0] if str(error).strip() else "DALI error"))
    return decoded


DECODE = {"torchvision": _decode_torchvision, "dali": _decode_dali}


@torch.no_grad()
def predict_paths(model, paths: list[str], top_k: int, batch_size: int = 64,
                  decoder: str = "torchvision") -> tuple[list[dict], list[tuple]]:
    """([{"path", "classes": [k names], "probs": [k floats]}] in input order, [(path, reason)] skipped)."""
    preset, names = model_preset(model.config), model.config["class_names"]
    device = next(model.parameters()).device
    rows, skipped = [], []
    for start in range(0, len(paths), batch_size):
        readable, encoded = [], []
        for path in paths[start:start + batch_size]:
            try:
                encoded.append(_read(path))
                readable.append(path)
            except OSError as error:
                skipped.append((path, f"{type(error).__name__}: {error}"))
        good, images = [], []
        for path, image in zip(readable, DECODE[decoder](encoded, preset) if encoded else []):
            if isinstance(image, Exception):
                skipped.append((path, f"{type(image).__name__}: {image}"))
            else:
                good.append(path)
                images.append(image.to(device))
        if not images:
            continue
        probs = torch.softmax(model(torch.stack(images)).float(), dim=1).cpu()
        top = probs.topk(top_k, dim=1)
        for path, values, indices in zip(good, top.values.tolist(), top.indices.tolist()):
            rows.append({"path": path, "classes": [names[i] for i in indices], "probs": values})
    return rows, skipped


def write_predictions(rows: list[dict], out: str | None) -> None:
    """CSV: path, class_1, prob_1, ..., class_k, prob_k (to `out`, or standard output)."""
    top_k = len(rows[0]["classes"]) if rows else 0
    header = ["path"] + [f"{kind}_{i}" for i in range(1, top_k + 1) for kind in ("class", "prob")]
    handle = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells = [row["path"]]
            for name, prob in zip(row["classes"], row["probs"]):
                cells += [name, f"{prob:.6f}"]
            writer.writerow(cells)
    finally:
        if out:
            handle.close()
