"""iNaturalist-2018-scale check of one loader process: peak memory and open files.

The split has iNaturalist 2018's train shape: 8,142 classes, 437,513 samples, at most
1,000 and at least 2 per class. The counts follow lt_dist's Pareto profile
(shards.subset.profile_counts) with n_max 1,000 and imbalance 500 (so n_min = 2);
its shape alpha is found by bisection as the largest whose floored counts sum to at
most 437,513, and the few samples still missing go one each to classes 1, 2, ...
(which keeps the counts non-increasing). Every sample is the same 8x8 PNG: the
check is about the loader's bookkeeping, not decoding. The split is packed once with
the real pack machinery (lt_dist.shards.pack, one shard per class: 8,142 tar files)
and cached under bench/data/.

Each strategy then runs in a fresh process: BalancedLoader, decoder "bytes" (a pread
by manifest offset per sample), num_workers 0, --max-open-files descriptors at most,
over --samples samples; it reports peak RSS (VmHWM) and the most descriptors it saw
open in /proc/self/fd (checked after every batch).

    python bench/loader_scale.py [--samples 200000] [--max-open-files 64] [--batch-size 256]
    python bench/loader.py --inat [the same options]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

try:
    from bench.common import DATA_DIR, markdown_table, write_results
except ImportError:  # run as a script
    from common import DATA_DIR, markdown_table, write_results

NUM_CLASSES, NUM_SAMPLES, N_MAX, IMBALANCE = 8142, 437_513, 1000, 500.0
RSS_LIMIT_MB = 1024
FD_SLACK = 8  # descriptors a Python process may open besides the reader's (stdio, pipes, the manifest)
COLUMNS = ["strategy", "samples", "samples/s", "peak RSS MB", "RSS after imports MB", "open fds max",
           "fds before loader", "reader cap", "classes (shards) read", "within limits"]


def inat_counts() -> np.ndarray:
    """(8142,) non-increasing counts, sum 437,513, max 1,000, min 2 (see the module doc)."""
    from lt_dist.shards.subset import profile_counts

    def counts(alpha: float) -> np.ndarray:
        return profile_counts("pareto", NUM_CLASSES, N_MAX, IMBALANCE, alpha)

    low, high = 0.5, 20.0  # the sum grows with alpha: 0.5 is far below, 20 far above the target
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if counts(middle).sum() <= NUM_SAMPLES else (low, middle)
    result = counts(low)
    missing = NUM_SAMPLES - int(result.sum())
    result[1:1 + missing] += 1
    assert result.sum() == NUM_SAMPLES and result.max() == N_MAX and result.min() == 2, result
    assert (np.diff(result) <= 0).all()
    return result


def pack_inat(counts: np.ndarray) -> str:
    """Pack (once) the split of `counts` samples per class, all one tiny PNG; returns the split dir."""
    from PIL import Image

    from lt_dist.shards.manifest import is_split_dir
    from lt_dist.shards.pack import PackOptions, pack
    from lt_dist.shards.plan import SubsetOptions
    from lt_dist.shards.sources import Item, Source

    out = os.path.join(DATA_DIR, f"inat2018-scale-c{NUM_CLASSES}-n{NUM_SAMPLES}")
    split_dir = os.path.join(out, "train")
    if is_split_dir(split_dir):
        return split_dir
    os.makedirs(DATA_DIR, exist_ok=True)
    image = os.path.join(DATA_DIR, "tiny-8x8.png")
    if not os.path.isfile(image):
        Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3)).save(image)
    names = [f"species{label:04d}" for label in range(NUM_CLASSES)]
    items = [Item(f"{names[label]}/{index:04d}.png", label, image, origin=image)
             for label, count in enumerate(counts.tolist()) for index in range(count)]
    source = Source("list", image, names, {"train": items})
    started = time.perf_counter()
    pack(source, SubsetOptions(), PackOptions(out=out, workers=2, check="header", progress=False),
         ["bench/loader_scale.py"])
    print(f"packed {NUM_SAMPLES} samples in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return split_dir


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (10^6 bytes)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024 / 1e6


def _open_fds() -> int:
    """Descriptors open in this process now (the listing's own descriptor not counted)."""
    return len(os.listdir("/proc/self/fd")) - 1


def child(args: argparse.Namespace) -> dict:
    """Run one loader over args.samples samples in this process; measure memory and descriptors."""
    import torch  # noqa: F401  (counted in "RSS after imports": what every loader process carries)

    from lt_dist.data.loader import BalancedLoader, LoaderConfig
    from lt_dist.data.sampler import SamplerConfig
    from lt_dist.dist import World

    rss_imports, fds_before = _status_mb("VmRSS"), _open_fds()
    config = LoaderConfig(args.split, args.batch_size, None, SamplerConfig(args.strategy, seed=0,
                          epoch_size=args.samples), "bytes", 0, max_open_files=args.max_open_files)
    started = time.perf_counter()
    loader = BalancedLoader(config, World())
    seen, count, most_fds = np.zeros(NUM_CLASSES, dtype=bool), 0, fds_before
    for data, labels in loader:
        count += len(data)
        seen[labels.numpy()] = True
        most_fds = max(most_fds, _open_fds())
    return {"strategy": args.strategy, "samples": count, "seconds": time.perf_counter() - started,
            "peak_rss_mb": _status_mb("VmHWM"), "rss_after_imports_mb": rss_imports,
            "fds_before": fds_before, "fds_max": most_fds, "cap": args.max_open_files,
            "classes_read": int(seen.sum())}


def run_child(split_dir: str, strategy: str, args: argparse.Namespace) -> dict:
    """child() in a fresh interpreter, so its peak RSS is the loader's alone."""
    command = [sys.executable, os.path.abspath(__file__), "--child", "--split", split_dir, "--strategy", strategy,
               "--samples", str(args.samples), "--max-open-files", str(args.max_open_files),
               "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench/loader_scale.py: {' '.join(command)} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rate"] = result["samples"] / result["seconds"]
    result["ok"] = (result["peak_rss_mb"] < RSS_LIMIT_MB
                    and result["fds_max"] - result["fds_before"] <= result["cap"]
                    and result["fds_max"] <= result["cap"] + FD_SLACK)
    return result


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of this check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000, help="samples drawn per strategy")
    parser.add_argument("--max-open-files", type=int, default=64, help="the reader's descriptor cap")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per batch")
    parser.add_argument("--strategies", default="instance,class", help="comma-separated sampler strategies")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--split", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Pack (once), run one child per strategy, print the table, write bench/results/loader_inat.json."""
    args = get_args_parser().parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    counts = inat_counts()
    split_dir = pack_inat(counts)
    rows = [run_child(split_dir, strategy, args) for strategy in args.strategies.split(",")]
    print(markdown_table(COLUMNS, [[r["strategy"], r["samples"], round(r["rate"]), round(r["peak_rss_mb"]),
                                    round(r["rss_after_imports_mb"]), r["fds_max"], r["fds_before"], r["cap"],
                                    r["classes_read"], "yes" if r["ok"] else "NO"] for r in rows]))
    notes = [
        f"split: {NUM_CLASSES} classes, {NUM_SAMPLES} samples, counts {int(counts.max())} .. "
        f"{int(counts.min())} (median {int(np.median(counts))}), one 8x8 PNG repeated, one shard per class.",
        "peak RSS: VmHWM of the loader process (torch imported), MB = 10^6 bytes; limit 1,000 MiB.",
        f"open fds max: every descriptor of the process, after each batch; within limits means at most "
        f"the cap above the count before the loader, and at most cap + {FD_SLACK} in all.",
    ]
    print("\n" + "\n".join(f"- {note}" for note in notes), flush=True)
    path = write_results("loader_inat", {"settings": {k: v for k, v in vars(args).items() if v is not None},
                                         "split_dir": split_dir, "counts_summary": {
                                             "max": int(counts.max()), "min": int(counts.min()),
                                             "median": float(np.median(counts)), "sum": int(counts.sum())},
                                         "rows": rows, "notes": notes})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
