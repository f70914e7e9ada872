"""`lt_dist` command line: parse, dispatch to a subcommand, turn bad input into exit 2."""
from __future__ import annotations

import argparse
import sys

from lt_dist import __version__
from lt_dist.commands import data as data_commands
from lt_dist.commands import report as report_commands
from lt_dist.commands import shards as shard_commands
from lt_dist.errors import UserInputError

EPILOG = """examples:
  lt_dist pack data/imagenet --out shards/inet --split train
  lt_dist pack --list ImageNet_LT_train.txt --root /data/imagenet --out shards/inet_lt --split train
  lt_dist pack --idx /usr/share/datasets/fashion-mnist --out shards/fmnist_lt \\
      --profile exp --imbalance 100 --max-per-class 1000 --val-per-class 20
  lt_dist stats shards/fmnist_lt --plot counts.png
  lt_dist verify shards/fmnist_lt --decode
  lt_dist sample-stats shards/fmnist_lt --sampler class --draws 200000
"""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes end in one line (no usage block) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The full `lt_dist` parser (reusable by scripts that wrap it)."""
    parser = OneLineParser(
        prog="lt_dist", add_help=add_help, epilog=EPILOG,
        description="lt-dist: long-tailed recognition by decoupling representation and classifier.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lt-dist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    shard_commands.add_parsers(subparsers)
    data_commands.add_parsers(subparsers)
    report_commands.add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lt_dist` console script; returns the exit status."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserInputError as error:
        print(f"lt_dist {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lt_dist {args.command}: interrupted; finished work is kept, run the same command "
              f"again to carry on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
