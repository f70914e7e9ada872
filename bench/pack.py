"""Benchmark `lt_dist pack`: images/s and MB/s, beside `tar -cf` of the same files as the floor.

Datasets:
    demo    Fashion-MNIST-LT packed from the IDX files in $FMNIST_DIR (the `make demo` pack;
            train/val/test, 28x28 images PNG-encoded by the pack)
    photos  about 2,000 JPEGs (~500x375, quality 90) cut, flipped and rescaled from
            scikit-learn's two sample photographs, 20 long-tailed classes (cached in bench/data/)
Each configuration runs the real CLI in a subprocess: once to warm the page cache, then
--repeats times; the table shows the best (shortest) wall-clock time, start-up included.

    python bench/pack.py [--repeats 3] [--num-images 2000] [--out-dir DIR] [--skip-demo]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

try:
    from bench.common import image_files, markdown_table, photo_folder, write_results
except ImportError:  # run as a script: python bench/pack.py
    from common import image_files, markdown_table, photo_folder, write_results

LT_DIST = [sys.executable, "-m", "lt_dist.cli"]
DEMO_ARGS = ["--profile", "exp", "--imbalance", "100", "--max-per-class", "1000",
             "--val-per-class", "20", "--seed", "0"]
COLUMNS = ["dataset", "method", "workers", "images", "MB", "seconds", "images/s", "MB/s", "x of tar floor"]
NOTES = [
    "seconds: best of the repeats after one warm-up run (page cache warm), wall clock of the "
    "whole command, Python start-up and imports included; x of tar floor = seconds / tar seconds.",
    "MB: encoded image bytes (10^6) of the input files (demo: the PNGs the pack writes); "
    "the same number divides every row of a dataset.",
    "demo: the pack reads the gzip IDX files, draws the long-tailed subset and PNG-encodes "
    "every 28x28 image; its floor is `tar -cf` of those PNGs, extracted from the packed shards "
    "into a folder once, so the gap includes the PNG encoding tar never does.",
    "photos: files are stored as read; --check decode (the default) decodes each JPEG at 1/8 "
    "scale, --check header only parses the header.",
    "workers 2 packs classes in one spawn pool shared by the splits: its start-up is part of the time.",
]


@dataclass(frozen=True)
class Case:
    """One timed configuration."""

    dataset: str  # "demo" | "photos"
    method: str  # what the table calls it
    workers: int | None  # packing processes; None for tar
    argv: Callable[[str], list[str]]  # output path -> command line
    images: int  # images the command handles
    bytes: int  # encoded image bytes of those images


def run_command(argv: list[str]) -> float:
    """Run argv, return its wall-clock seconds; exit with its stderr if it fails."""
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench/pack.py: command failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr}")
    return elapsed


def remove(path: str) -> None:
    """Delete a file or a folder tree, if present."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def time_case(case: Case, out_dir: str, repeats: int) -> list[float]:
    """Seconds of each timed run (the warm-up run is not returned); every run writes afresh."""
    times = []
    for run in range(repeats + 1):
        target = os.path.join(out_dir, f"{case.dataset}-{case.method.replace(' ', '_')}-{case.workers}-{run}")
        os.sync()  # write-back of the previous run's files should not land inside this one
        seconds = run_command(case.argv(target))
        remove(target)
        if run:
            times.append(seconds)
    return times


def pack_argv(source: list[str], workers: int, extra: tuple[str, ...] = ()) -> Callable[[str], list[str]]:
    """lt_dist pack command line for an output folder."""
    return lambda out: [*LT_DIST, "pack", *source, "--out", out, "--workers", str(workers),
                        "--no-progress", *extra]


def tar_argv(root: str) -> Callable[[str], list[str]]:
    """The floor: tar -cf OUT.tar -C ROOT ."""
    return lambda out: ["tar", "-cf", out + ".tar", "-C", root, "."]


def extract_images(pack_dir: str, folder: str) -> None:
    """Copy every image member of a pack's shards into folder/<split>/<shard>/<member>."""
    for dirpath, _, names in os.walk(pack_dir):
        for name in sorted(n for n in names if n.endswith(".tar")):
            target = os.path.join(folder, os.path.relpath(dirpath, pack_dir), name[:-4])
            os.makedirs(target)
            with tarfile.open(os.path.join(dirpath, name)) as shard:
                for member in shard.getmembers():
                    if member.isfile() and not member.name.endswith(".cls"):
                        with open(os.path.join(target, os.path.basename(member.name)), "wb") as handle:
                            handle.write(shard.extractfile(member).read())


def folder_totals(root: str) -> tuple[int, int]:
    """(number of files, total bytes) under root."""
    paths = image_files(root)
    return len(paths), sum(os.path.getsize(path) for path in paths)


def demo_cases(fmnist_dir: str, out_dir: str) -> list[Case]:
    """Pack of the demo set with 1 and 2 workers, and tar of the PNGs it produces."""
    if not os.path.isdir(fmnist_dir):
        sys.exit(f"bench/pack.py: Fashion-MNIST IDX folder {fmnist_dir!r} not found; set FMNIST_DIR "
                 f"(Debian package dataset-fashion-mnist) or pass --skip-demo")
    source = ["--idx", fmnist_dir, *DEMO_ARGS]
    reference, pngs = os.path.join(out_dir, "demo-reference"), os.path.join(out_dir, "demo-png")
    remove(reference)
    remove(pngs)
    run_command(pack_argv(source, 1)(reference))
    extract_images(reference, pngs)
    remove(reference)
    images, size = folder_totals(pngs)
    return [Case("demo", "lt_dist pack", workers, pack_argv(source, workers), images, size)
            for workers in (1, 2)] + [Case("demo", "tar -cf", None, tar_argv(pngs), images, size)]


def photo_cases(root: str) -> list[Case]:
    """Pack of the JPEG folder with 1 and 2 workers, --check header with 2, and tar."""
    images, size = folder_totals(root)
    cases = [Case("photos", "lt_dist pack", workers, pack_argv([root], workers), images, size)
             for workers in (1, 2)]
    cases.append(Case("photos", "lt_dist pack --check header", 2,
                      pack_argv([root], 2, ("--check", "header")), images, size))
    return cases + [Case("photos", "tar -cf", None, tar_argv(root), images, size)]


def result_rows(cases: list[Case], times: list[list[float]]) -> list[dict]:
    """One dict per case with the best time and the rates; tar of the same dataset is 1.0x."""
    floor = {case.dataset: min(t) for case, t in zip(cases, times) if case.method == "tar -cf"}
    rows = []
    for case, seconds in zip(cases, times):
        best = min(seconds)
        rows.append({"dataset": case.dataset, "method": case.method, "workers": case.workers,
                     "images": case.images, "bytes": case.bytes, "seconds": best, "all_seconds": seconds,
                     "images_per_s": case.images / best, "mb_per_s": case.bytes / 1e6 / best,
                     "x_tar_floor": best / floor[case.dataset]})
    return rows


def table_row(row: dict) -> list:
    """A result row as the table shows it."""
    return [row["dataset"], f"`{row['method']}`", row["workers"] or "", row["images"],
            round(row["bytes"] / 1e6, 1), round(row["seconds"], 2), round(row["images_per_s"]),
            round(row["mb_per_s"], 1), round(row["x_tar_floor"], 1)]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (best is kept)")
    parser.add_argument("--num-images", type=int, default=2000, help="JPEGs in the photo folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo folder")
    parser.add_argument("--out-dir", help="where packs and tars are written (default: a temp dir, removed)")
    parser.add_argument("--fmnist-dir", default=os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist"),
                        help="Fashion-MNIST IDX folder (env FMNIST_DIR)")
    parser.add_argument("--skip-demo", action="store_true", help="only the photo folder")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Build the inputs, time every configuration, print the table, write bench/results/pack.json."""
    args = get_args_parser().parse_args(argv)
    if args.repeats < 1 or args.num_images < 20:
        sys.exit(f"bench/pack.py: need --repeats >= 1 and --num-images >= 20 "
                 f"(got {args.repeats}, {args.num_images})")
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="lt_dist-bench-pack-")
    os.makedirs(out_dir, exist_ok=True)
    try:
        root = photo_folder(args.num_images, seed=args.seed)
        print(f"photo folder: {root}", file=sys.stderr)
        cases = [] if args.skip_demo else demo_cases(args.fmnist_dir, out_dir)
        cases += photo_cases(root)
        times = []
        for case in cases:
            print(f"timing {case.dataset}: {case.method} (workers {case.workers})", file=sys.stderr)
            times.append(time_case(case, out_dir, args.repeats))
    finally:
        remove(os.path.join(out_dir, "demo-png"))
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    rows = result_rows(cases, times)
    count, size = folder_totals(root)
    notes = NOTES + [f"photos: {count} JPEGs, mean {size / count / 1e3:.0f} KB (ImageNet train averages "
                     f"about 110 KB: these smooth photos compress better)."]
    print(markdown_table(COLUMNS, [table_row(row) for row in rows]))
    print("\n" + "\n".join(f"- {note}" for note in notes), flush=True)
    path = write_results("pack", {"settings": {"repeats": args.repeats, "num_images": args.num_images,
                                               "seed": args.seed, "fmnist_dir": args.fmnist_dir,
                                               "photo_folder": root, "skip_demo": args.skip_demo},
                                  "rows": rows, "notes": notes})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
