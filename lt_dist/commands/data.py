"""`lt_dist sample-stats`: run the real interleaver (no decoding) and compare shares."""
from __future__ import annotations

import argparse
import json

import numpy as np

from lt_dist.errors import UserInputError
from lt_dist.storage.settings import add_storage_flags, export_storage_flags
from lt_dist.storage.urls import is_url
from lt_dist.optional import default_decoder

# The draws are held in memory at once (a row and a label each): a bound fixed by what a
# share estimate needs (at 20M draws the standard error of a 1% share is ~2e-5), not by
# the number typed.
MAX_DRAWS = 20_000_000


def add_parsers(subparsers) -> None:
    """Register sample-stats and extract."""
    _add_extract(subparsers)
    parser = subparsers.add_parser(
        "sample-stats", help="check a sampler: target vs drawn class shares",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run the real balanced interleaver over a packed split without decoding and "
        "print, per many/medium/few group and in total, the target and the drawn share of samples "
        "and the total variation distance.")
    parser.add_argument("path", help="shards/NAME or shards/NAME/SPLIT")
    parser.add_argument("--split", default="train", help="split when PATH is a dataset folder")
    parser.add_argument("--sampler", default="instance",
                        help="instance | class | sqrt | progressive | a number q in [0, 1]")
    parser.add_argument("--draws", type=int, default=200_000, help="samples to draw")
    parser.add_argument("--epoch", type=int, default=0, help="0-based epoch (progressive moves with it)")
    parser.add_argument("--epochs", type=int, default=1, help="number of epochs T")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--draw", choices=("stratified", "iid"), default="stratified",
                        help="exact per-epoch class quotas, or independent draws")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_storage_flags(parser)
    parser.set_defaults(run=run_sample_stats)


def run_sample_stats(args) -> int:
    # The arguments are checked before the loader (and torch) is imported: a typo costs
    # a fraction of a second, not the ten a torch import takes on a busy machine.
    from lt_dist.data.balance import class_probs, resolve_strategy
    from lt_dist.shards.manifest import load_manifest, resolve_split

    export_storage_flags(args)
    if not 1 <= args.draws <= MAX_DRAWS:
        raise UserInputError(f"--draws {args.draws} is out of range: 1 to {MAX_DRAWS:,} "
                             f"(about 16 bytes of memory each)")
    if args.epochs < 1 or not 0 <= args.epoch < args.epochs:
        raise UserInputError(f"--epoch {args.epoch} / --epochs {args.epochs}: need epochs >= 1 and "
                             f"0 <= epoch < epochs")
    if args.seed < 0:
        raise UserInputError(f"--seed must be >= 0, got {args.seed}")
    strategy = args.sampler if not _is_number(args.sampler) else float(args.sampler)
    if isinstance(strategy, float) and not 0 <= strategy <= 1:  # NaN fails this too
        raise UserInputError(f"--sampler {args.sampler!r}: a number q must lie in [0, 1]")
    try:
        resolve_strategy(strategy)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    split_dir = resolve_split(args.path, args.split)  # a split folder is taken as it is
    counts = load_manifest(split_dir).samples_per_class

    from lt_dist.data.audit import format_share_table, share_table
    from lt_dist.data.loader import BalancedLoader, LoaderConfig
    from lt_dist.data.sampler import SamplerConfig
    from lt_dist.dist import World

    config = SamplerConfig(strategy, args.seed, args.epochs, "pad", args.draws, args.draw)
    try:
        target = class_probs(counts, strategy, args.epoch, args.epochs)
        loader = BalancedLoader(LoaderConfig(split_dir, 8192, None, config, "none", 0), World(), counts)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    loader.set_epoch(args.epoch)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rows = np.concatenate([batch.numpy() for batch, _ in loader])
    labels = np.searchsorted(starts, rows, side="right") - 1  # rows are grouped by class
    table = share_table(counts, target, labels)
    print(json.dumps(table, indent=1) if args.json else format_share_table(table, len(rows)))
    return 0


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _add_extract(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract", help="store frozen-backbone features for stage 2",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run the best-on-val stage-1 backbone (eval transform, every image once) over packed "
        "splits and write Arrow IPC features, the stage-1 classifier W, b and the training class counts. "
        "Under `torchrun --nproc_per_node N -m lt_dist.cli extract ...` the work is split across processes.")
    parser.add_argument("--ckpt", required=True, help="stage-1 run folder runs/NAME (or its best_model.pt)")
    parser.add_argument("--data", required=True, help="packed dataset shards/NAME")
    parser.add_argument("--split", action="append", dest="splits",
                        help="split to extract, repeatable (default: train, val, and test if present)")
    parser.add_argument("--out", required=True, help="features folder features/NAME")
    parser.add_argument("--decoder", choices=("dali", "torchvision"), default=default_decoder(),
                        help="image decoder (default: dali where it is installed, else torchvision; both "
                        "decode on the GPU when CUDA is there)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch per process")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader processes per rank (None: 0 for dali, for torchvision the CPUs per rank "
                        "less one, at most 8; logged)")
    parser.add_argument("--bn-recalibrate", choices=("none", "class"), default="none",
                        help="class: re-estimate BatchNorm statistics on class-balanced training batches "
                        "(training augmentation, forward passes only) before extracting every split, as the "
                        "official stage 2 leaves them")
    parser.add_argument("--bn-batches", type=int, default=100,
                        help="batches of --batch-size per process for --bn-recalibrate class")
    parser.add_argument("--train-views", type=int, default=0,
                        help="also store K passes over train with the training augmentation (train.viewNNN.arrow, "
                        "4 x feature-dim bytes per sample per view); the trained stage-2 methods walk one per epoch")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling and augmentation of --bn-recalibrate and --train-views")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress output (default: a bar per split on a terminal, else a line every 30 s)")
    add_storage_flags(parser)
    parser.set_defaults(run=run_extract)


def run_extract(args) -> int:
    import os

    from lt_dist.config import check_int
    from lt_dist.optional import require

    if args.decoder == "dali":  # a missing package first: no other message would help
        require("nvidia.dali", "--decoder dali")
    export_storage_flags(args)
    if is_url(args.data):  # a URL cannot be listed like a folder: find_splits tries train/val/test
        from lt_dist.shards.manifest import find_splits

        splits = args.splits or [url.rstrip("/").rpartition("/")[2] for url in find_splits(args.data)]
    else:
        splits = args.splits or [s for s in ("train", "val", "test") if os.path.isdir(os.path.join(args.data, s))]
    try:  # bounded before anything is allocated in proportion to them
        check_int("--batch-size", args.batch_size, 1, 65_536)
        if args.workers is not None:
            check_int("--workers", args.workers, 0, 64)
        check_int("--bn-batches", args.bn_batches, 1, 1_000_000)
        check_int("--train-views", args.train_views, 0, 10_000)
        check_int("--seed", args.seed, 0, 2**32 - 1)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    if not splits:
        raise UserInputError(f"--data {args.data!r} has no train, val or test split")
    if args.train_views and "train" not in splits:
        raise UserInputError("--train-views needs the train split among --split")
    if args.workers is None:
        from lt_dist.choices import default_workers

        args.workers, why = default_workers(args.decoder, ranks_on_node=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if os.environ.get("RANK", "0") == "0":
            print(f"workers: {args.workers} loader processes per rank ({why}; --workers sets it)", flush=True)
    from lt_dist.engine.extract import extract  # torch and the loaders: after the cheap checks

    bn_batches = args.bn_batches if args.bn_recalibrate == "class" else 0
    extract(args.ckpt, args.data, splits, args.out, args.decoder, args.batch_size, args.workers, bn_batches,
            args.seed, args.train_views, progress=not args.no_progress)
    return 0
