"""The one exception type for bad user input, and a parser that reports bad flags in one line.

The command line turns it into a one-line message and exit status 2; library callers
can catch it as a ValueError.
"""
import argparse


class UserInputError(ValueError):
    """Bad input from the user: the message names the value and what is accepted."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line `PROG: error: ...` and exit 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
