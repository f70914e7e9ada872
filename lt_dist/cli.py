"""`lt_dist` command line: parse, dispatch to a subcommand, turn bad input into exit 2."""
from __future__ import annotations

import argparse
import os
import sys

from lt_dist import __version__
from lt_dist.commands import data as data_commands
from lt_dist.commands import launch as launch_commands
from lt_dist.commands import model as model_commands
from lt_dist.commands import report as report_commands
from lt_dist.commands import shards as shard_commands
from lt_dist.errors import OneLineArgumentParser, UserInputError

EPILOG = """examples:
  lt_dist pack data/imagenet --out shards/inet --split train
  lt_dist pack --list ImageNet_LT_train.txt --root /data/imagenet --out shards/inet_lt --split train
  lt_dist pack --idx /usr/share/datasets/fashion-mnist --out shards/fmnist_lt \\
      --profile exp --imbalance 100 --max-per-class 1000 --val-per-class 20
  lt_dist stats shards/fmnist_lt --plot counts.png
  lt_dist verify shards/fmnist_lt --decode
  lt_dist sample-stats shards/fmnist_lt --sampler class --draws 200000
  lt_dist export --run runs/demo --results results/demo --method lws --out model/ --format onnx
  lt_dist evaluate model/ --data shards/fmnist_lt --split test
  lt_dist predict model/ --folder photos/ --top-k 5 --out preds.csv
  lt_dist launch --num_gpus 2 launch/train_repr.py --ds_config launch/ds.json --data shards/fmnist_lt ...
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The full `lt_dist` parser (reusable by scripts that wrap it)."""
    parser = OneLineArgumentParser(
        prog="lt_dist", add_help=add_help, epilog=EPILOG,
        description="lt-dist: long-tailed recognition by decoupling representation and classifier.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lt-dist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    shard_commands.add_parsers(subparsers)
    data_commands.add_parsers(subparsers)
    report_commands.add_parsers(subparsers)
    model_commands.add_parsers(subparsers)
    launch_commands.add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lt_dist` console script; returns the exit status."""
    parser = get_args_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["launch"] and argv[1:2] not in (["-h"], ["--help"]):
        # everything after `launch` is DeepSpeed's (its options come first, argparse would claim them)
        args = argparse.Namespace(command="launch", deepspeed_args=argv[1:], run=launch_commands.run_launch)
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserInputError as error:
        print(f"lt_dist {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # a path that is missing, a file, read-only, full: the user's to fix
        where = f": {error.filename!r}" if error.filename else ""
        print(f"lt_dist {args.command}: error: {_one_line(error.strerror or error)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lt_dist {args.command}: interrupted; finished work is kept, run the same command "
              f"again to carry on", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line, the traceback only on request
        if os.environ.get("LT_DIST_TRACEBACK") == "1":
            raise
        print(f"lt_dist {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
              f"(LT_DIST_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1


def _one_line(message: object) -> str:
    """A message as one line (library errors, pyarrow's among them, may hold newlines)."""
    return " ".join(str(message).split())


if __name__ == "__main__":
    sys.exit(main())
