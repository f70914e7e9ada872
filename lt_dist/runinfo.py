"""Facts about how a result was made, for config.json, the feature index, search.json and the report.

Nothing here imports torch or touches the network: a command and a commit are cheap to record and a
missing git (or a copy of the code outside a checkout) gives None, never an error.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys


def command_line(argv: list[str] | None = None) -> str:
    """The command as a shell would take it back: `python SCRIPT ARGS...` (argv defaults to sys.argv)."""
    argv = sys.argv if argv is None else argv
    return shlex.join(["python", *argv])


def git_commit(path: str) -> str | None:
    """The commit checked out where `path` lives, with "+dirty" when tracked files differ; None outside
    a git checkout or without git (5 s at most: a hung file system never stalls a run)."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(code_path: str) -> dict:
    """{"command", "git_commit"} of the running process, for the JSON a command writes beside its output."""
    return {"command": command_line(), "git_commit": git_commit(code_path)}
