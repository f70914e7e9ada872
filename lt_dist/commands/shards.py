"""`lt_dist pack`, `lt_dist stats`, `lt_dist verify`."""
from __future__ import annotations

import argparse
import json
import re
import sys

from lt_dist.errors import UserInputError
from lt_dist.storage.settings import add_storage_flags, export_storage_flags
from lt_dist.storage.urls import is_url

SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """'256MB', '1GiB', '500000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 500000, 256MB, 1GiB)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def add_parsers(subparsers) -> None:
    """Register pack, stats and verify."""
    _add_pack(subparsers)
    stats = subparsers.add_parser("stats", help="class counts, imbalance and many/medium/few split",
                                  description="Class statistics of a packed dataset, a split list "
                                  "('path label' lines) or a JSON list of per-class counts.")
    stats.add_argument("path", nargs="?", help="shards/NAME, shards/NAME/SPLIT, SPLIT.txt, or a URL "
                       "(s3://, gs://, http(s)://) of a dataset or split: only its index files are read")
    stats.add_argument("--counts", metavar="FILE.json", help="JSON list of per-class counts")
    stats.add_argument("--plot", metavar="FILE.png", help="draw the sorted class-count curve (log scale)")
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")
    add_storage_flags(stats)  # a URL: only its index files are fetched
    stats.set_defaults(run=run_stats)
    verify = subparsers.add_parser("verify", help="check shards against the manifest",
                                   description="Check every shard's size, sha256 and members against "
                                   "the manifest; exit status 1 on any mismatch, naming it.")
    verify.add_argument("path", help="shards/NAME (every split) or shards/NAME/SPLIT; or a URL "
                        "(s3://, gs://, http(s)://) of either")
    verify.add_argument("--decode", action="store_true", help="also decode every image from its offset")
    add_storage_flags(verify)
    verify.set_defaults(run=run_verify)


def _add_pack(subparsers) -> None:
    pack = subparsers.add_parser(
        "pack", help="pack images into per-class webdataset shards",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pack an image dataset into webdataset tar shards, one class per shard stream, "
        "with a Parquet manifest. Inputs: a folder tree ROOT/<class>/<image>, a split list "
        "(--list, 'relative/path label' lines) or MNIST-style IDX files (--idx). Split S is written "
        "to OUT/S. An interrupted pack is finished by running the same command again.")
    source = pack.add_argument_group("input (one of)")
    source.add_argument("image_root", nargs="?", help="folder tree ROOT/<class name>/<image>")
    source.add_argument("--list", dest="list_file", metavar="SPLIT.txt", help="split list; paths relative to --root")
    source.add_argument("--root", help="image root for --list")
    source.add_argument("--idx", metavar="DIR", help="folder with {train,t10k}-{images,labels}-idx*-ubyte[.gz]")
    source.add_argument("--num-classes", type=int, help="number of classes of a --list (default: max label + 1)")
    source.add_argument("--class-names", help="comma-separated names, or @FILE with one name per line")
    out = pack.add_argument_group("output")
    out.add_argument("--out", required=True, help="dataset folder shards/NAME, or a URL (s3://B/P/NAME, "
                     "gs://...): packed in a local staging folder, then uploaded, index files last")
    out.add_argument("--split", default="train", help="name of the split being packed")
    out.add_argument("--shard-size", type=parse_size, default="256MiB", help="max bytes per shard")
    out.add_argument("--shard-count", type=int, default=10_000, help="max samples per shard")
    out.add_argument("--workers", type=int, default=1, help="packing processes")
    out.add_argument("--check", choices=("decode", "header", "none"), default="decode",
                     help="how hard to check each image decodes")
    out.add_argument("--on-bad-image", choices=("error", "skip"), default="error",
                     help="stop at a missing/undecodable image, or skip and list it")
    out.add_argument("--overwrite", action="store_true", help="delete what the split folders hold first")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    subset = pack.add_argument_group("long-tailed subset of a balanced source")
    subset.add_argument("--profile", choices=("exp", "pareto"), help="n_j profile; none keeps every image")
    subset.add_argument("--imbalance", type=float, default=100.0, help="n_max / n_min")
    subset.add_argument("--alpha", type=float, default=6.0, help="pareto shape")
    subset.add_argument("--max-per-class", type=int,
                        help="n_max, the images of the largest class of the subset (default: the smallest "
                        "class of the source less --val-per-class, so every class can have its profile "
                        "count; the summary line prints the largest and smallest class packed)")
    subset.add_argument("--val-per-class", type=int, default=0,
                        help="balanced val split held out of the images the subset left out")
    subset.add_argument("--seed", type=int, default=0, help="seed of the per-class draws")
    subset.add_argument("--ids", metavar="IDS.txt", help="keep exactly these ids (a pack's ids.txt)")
    add_storage_flags(pack)
    pack.set_defaults(run=run_pack)


def _class_names(text: str | None) -> list[str] | None:
    if not text:
        return None
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8-sig") as handle:
                names = [line.strip() for line in handle if line.strip()]
        except OSError as error:
            raise UserInputError(f"cannot read --class-names file {text[1:]!r}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UserInputError(f"--class-names file {text[1:]!r} is not UTF-8 text") from None
    else:
        names = [name.strip() for name in text.split(",")]
    if not names or not all(names) or len(set(names)) != len(names):
        raise UserInputError(f"--class-names {text!r} must list distinct, non-empty names")
    return names


def build_source(args):
    """The Source named by exactly one of IMAGE_ROOT, --list, --idx."""
    from lt_dist.shards import sources

    given = [name for name, value in (("IMAGE_ROOT", args.image_root), ("--list", args.list_file),
                                      ("--idx", args.idx)) if value]
    if len(given) != 1:
        raise UserInputError(f"give exactly one input: IMAGE_ROOT, --list or --idx (got {given or 'none'})")
    names = _class_names(args.class_names)
    if args.list_file:
        if not args.root:
            raise UserInputError("--list needs --root, the folder its paths are relative to")
        return sources.list_source(args.list_file, args.root, args.split, args.num_classes, names)
    if args.idx:
        if args.split != "train":
            raise UserInputError("--idx packs the source's own splits (train, test); drop --split")
        return sources.idx_source(args.idx, names)
    source = sources.folder_source(args.image_root, args.split)
    if names:
        if len(names) != len(source.class_names):
            raise UserInputError(f"{len(names)} class names for {len(source.class_names)} class folders")
        source.class_names = names
    return source


def run_pack(args) -> int:
    from lt_dist.shards.pack import PackOptions, PackWorkerDied, pack
    from lt_dist.shards.plan import SubsetOptions
    from lt_dist.shards.writer import PackError, ShardLimits

    if args.shard_count < 1 or args.shard_size < 1:
        raise UserInputError(f"--shard-count and --shard-size must be >= 1 "
                             f"(got {args.shard_count}, {args.shard_size})")
    export_storage_flags(args)
    source = build_source(args)
    subset = SubsetOptions(args.profile, args.imbalance, args.alpha, args.max_per_class,
                           args.val_per_class, args.seed, args.ids)
    options = PackOptions(args.out, args.split, ShardLimits(args.shard_size, args.shard_count),
                          args.workers, args.check, args.on_bad_image == "skip", args.overwrite,
                          not args.no_progress)
    try:
        if is_url(args.out):
            from lt_dist.shards.publish import pack_to_url

            summaries = pack_to_url(pack, source, subset, options, ["lt_dist", *sys.argv[1:]])
        else:
            summaries = pack(source, subset, options, ["lt_dist", *sys.argv[1:]])
    except PackError as error:
        raise UserInputError(str(error)) from None
    except PackWorkerDied as error:  # a fault of the machine, not of the input: exit 1
        print(f"lt_dist pack: {error}", file=sys.stderr)
        return 1
    for summary in summaries.values():  # the one summary line per split
        reused = summary["reused_shards"]
        print(f"{summary['split']}: {summary['num_samples']} images ({summary['largest_class']} to "
              f"{summary['smallest_class']} per class), {summary['num_shards']} shards, "
              f"{summary['bytes'] / 1e6:.1f} MB, {summary['skipped']} skipped, {summary['seconds']:.1f} s"
              + (f", {reused} finished shards reused" if reused else ""))
    return 0


def run_stats(args) -> int:
    from lt_dist.shards.stats import format_stats, load_counts, stats_by_split

    export_storage_flags(args)
    counts_by_name = load_counts(args.path, args.counts)
    numbers = stats_by_split(counts_by_name)
    if args.json:
        print(json.dumps(numbers, indent=1))
    else:
        print("\n".join(format_stats(name, stats) for name, stats in numbers.items()))
    if args.plot:
        from lt_dist.report.figures import plot_class_counts

        plot_class_counts(counts_by_name, args.plot, title=args.path or args.counts)
        print(f"wrote {args.plot}")
    return 0


def run_verify(args) -> int:
    from tqdm import tqdm

    from lt_dist.shards.manifest import find_splits, is_split_dir
    from lt_dist.storage.urls import is_url
    from lt_dist.shards.verify import verify_split

    export_storage_flags(args)
    failed = False
    for split_dir in find_splits(args.path, allow_unfinished=True):
        if not is_url(split_dir) and not is_split_dir(split_dir):
            print(f"{split_dir}: FAILED (unfinished: shards but no manifest.parquet; run its pack again)")
            failed = True
            continue
        try:
            with tqdm(desc=f"verify {split_dir}", unit="img", file=sys.stderr, disable=None) as bar:
                report = verify_split(split_dir, decode=args.decode, progress=bar.update)
        except UserInputError as error:  # a damaged index is a finding of verify, not a usage error
            print(f"{split_dir}: FAILED ({error})")
            failed = True
            continue
        status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
        decoded = f", {report.decoded} decoded" if args.decode else ""
        print(f"{split_dir}: {report.num_shards} shards, {report.num_samples} samples{decoded}: {status}")
        for problem in report.problems[:50]:
            print(f"  {problem}")
        failed |= not report.ok
    return 1 if failed else 0
