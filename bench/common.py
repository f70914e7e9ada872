"""Helpers shared by the benchmarks under bench/: test photos, machine facts, results.

Each benchmark prints a markdown table and writes the same numbers, with the date and
the machine, to bench/results/<name>.json (git-ignored). Generated inputs are cached
under bench/data/ (git-ignored) so reruns skip making them.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(BENCH_DIR, "data")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


def busy_jiffies() -> int:
    """Clock ticks the whole machine has spent busy since boot (every core, every process)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def own_cpu() -> float:
    """CPU seconds of this process (all its threads) and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_info() -> dict:
    """CPU count and model, Python version, platform: what a reader needs to compare runs."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform()}


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; numeric columns right-aligned."""
    def is_number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    cells = [[str(value) for value in row] for row in rows]
    align = ["---:" if rows and all(is_number(row[i]) for row in rows if row[i] != "") else "---"
             for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def write_results(name: str, payload: dict) -> str:
    """Write payload, stamped with the date and the machine, to bench/results/<name>.json."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    record = {"benchmark": name, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_info(), **payload}
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
        handle.write("\n")
    return path


def long_tailed_counts(total: int, num_classes: int, imbalance: float) -> list[int]:
    """Images per class on an exponential profile (n_0 / n_last ~ imbalance) summing to total."""
    fraction = imbalance ** -(np.arange(num_classes) / max(num_classes - 1, 1))
    counts = np.maximum(np.floor(total * fraction / fraction.sum()).astype(int), 1)
    counts[0] += total - counts.sum()  # rounding remainder goes to the head class
    return counts.tolist()


def random_photo(rng: np.random.Generator, photos: list[np.ndarray]):
    """One ImageNet-like picture: a random crop of a photo, maybe flipped, rescaled to ~500x375.

    Returns a PIL image, landscape 3 times in 4, long side 470-500 px, aspect 0.70-0.80.
    """
    from PIL import Image

    photo = photos[int(rng.integers(len(photos)))]  # (H, W, 3) uint8
    long_side = int(rng.integers(470, 501))
    short_side = int(round(long_side * rng.uniform(0.70, 0.80)))
    width, height = (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)
    # A crop with the target's aspect, 35-100% of the area of the largest one that fits.
    photo_h, photo_w = photo.shape[:2]
    scale = min(photo_w / width, photo_h / height) * np.sqrt(rng.uniform(0.35, 1.0))
    crop_w, crop_h = max(int(width * scale), 1), max(int(height * scale), 1)
    x = int(rng.integers(0, photo_w - crop_w + 1))
    y = int(rng.integers(0, photo_h - crop_h + 1))
    image = Image.fromarray(photo[y:y + crop_h, x:x + crop_w])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.resize((width, height), Image.Resampling.BICUBIC)


def load_photos(folder: str | None = None) -> list[np.ndarray]:
    """china.jpg and flower.jpg as uint8 (H, W, 3): from scikit-learn, or from `folder`
    (a copy of them, e.g. `make gpu-wheels`' gpu-wheels/photos/ for a machine without scikit-learn)."""
    if folder is None:
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images)
    from PIL import Image

    names = ("china.jpg", "flower.jpg")
    return [np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")) for name in names]


def photo_folder(num_images: int = 2000, num_classes: int = 20, imbalance: float = 10.0,
                 seed: int = 0, quality: int = 90, photos: list[np.ndarray] | None = None,
                 data_dir: str = DATA_DIR) -> str:
    """A cached folder ROOT/<class>/<image>.jpg of long-tailed JPEGs cut from scikit-learn's photos.

    The photos are china.jpg and flower.jpg (load_photos(); `photos` passes them in).
    The folder, under data_dir, is built under a temporary name and renamed when
    complete, so an existing folder is always whole. Returns its path.
    """
    name = f"photos-n{num_images}-c{num_classes}-imb{imbalance:g}-q{quality}-seed{seed}"
    root = os.path.join(data_dir, name)
    if os.path.isdir(root):
        return root
    photos = load_photos() if photos is None else photos
    rng = np.random.default_rng(seed)
    temp = root + ".tmp"
    shutil.rmtree(temp, ignore_errors=True)  # left by an interrupted run
    for label, count in enumerate(long_tailed_counts(num_images, num_classes, imbalance)):
        class_dir = os.path.join(temp, f"class{label:02d}")
        os.makedirs(class_dir)
        for index in range(count):
            random_photo(rng, photos).save(os.path.join(class_dir, f"{index:05d}.jpg"),
                                           format="JPEG", quality=quality)
    os.replace(temp, root)
    return root


def image_files(root: str) -> list[str]:
    """Paths of the files under root, sorted."""
    return sorted(os.path.join(dirpath, name) for dirpath, _, names in os.walk(root) for name in names)
