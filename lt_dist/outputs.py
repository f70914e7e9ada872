"""Checks of output paths, before any work: a file where a folder belongs, a folder that cannot be written.

Everything here only looks; nothing is created, so a refused command leaves no trace.
"""
from __future__ import annotations

import os

from lt_dist.errors import UserInputError


def _nearest_existing(path: str) -> str:
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def check_output_folder(path: str, flag: str) -> None:
    """Refuse an output folder that is a file, or that cannot be created or written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserInputError(f"{flag} {path!r} is a file, not a folder")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise UserInputError(f"{flag} {path!r}: {existing!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {path!r}: {existing!r} is not writable")


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output file that is a folder, or whose folder does not exist or cannot be written."""
    if os.path.isdir(path):
        raise UserInputError(f"{flag} {path!r} is a folder, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserInputError(f"{flag} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UserInputError(f"{flag} {path!r} is not writable")
