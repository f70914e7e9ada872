"""StorageSettings: how remote data is fetched and cached on this node.

Every field has a flag on the entry points and an environment variable, so that
DataLoader workers and launcher-started ranks inherit what the command line said:
    LT_DIST_CACHE            cache folder (default ~/.cache/lt_dist)
    LT_DIST_CACHE_LIMIT      bytes the cache may hold, e.g. 200G (default: no limit)
    LT_DIST_NODE_ID          the node's name in the cache folder (default: hostname)
    LT_DIST_STORAGE_OPTIONS  JSON object passed to fsspec (endpoint, anon, ...)
    LT_DIST_PREFETCH         batches to fetch ahead (default 8)
    LT_DIST_PREFETCH_THREADS concurrent downloads per process (default 4)
    LT_DIST_RETRIES          tries of a transient failure before giving up (default 8)
    LT_DIST_STALL_SECONDS    an HTTP(S) connection that sends nothing this long is a transient
                             error (retried), not a hang (default 60)
Credentials never go here: AWS env vars/profiles, AWS_ENDPOINT_URL, GCS ADC.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
from dataclasses import dataclass, field

from lt_dist.errors import UserInputError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, name: str = "--cache-limit") -> int:
    """'200G', '1GiB', '5000000' -> bytes; anything else is a UserInputError naming it."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise UserInputError(f"{name} {text!r} is not a size (examples: 5000000, 500M, 200G, 1GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _positive_int(text: str, name: str) -> int:
    if not str(text).isdigit() or int(text) < 1:
        raise UserInputError(f"{name} must be a whole number >= 1, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class StorageSettings:
    """Cache and transfer settings of one process (the same on every rank of a node)."""

    cache_dir: str = field(default_factory=lambda: os.path.expanduser("~/.cache/lt_dist"))
    cache_limit: int | None = None  # bytes; None: unbounded
    node_id: str = field(default_factory=socket.gethostname)
    options: dict = field(default_factory=dict)  # fsspec storage options
    prefetch_batches: int = 8  # batches of look-ahead per loader worker
    prefetch_threads: int = 4  # concurrent downloads per process
    retries: int = 8  # tries of a transient error (backoff 0.5 s doubling, at most 10 s)
    stall_seconds: int = 60  # HTTP(S): connect or read silence longer than this fails the try

    @classmethod
    def from_env(cls, environ=None) -> "StorageSettings":
        """Settings from LT_DIST_* variables (absent ones keep their defaults)."""
        env = os.environ if environ is None else environ
        values: dict = {}
        if env.get("LT_DIST_CACHE"):
            values["cache_dir"] = os.path.expanduser(env["LT_DIST_CACHE"])
        if env.get("LT_DIST_CACHE_LIMIT"):
            values["cache_limit"] = parse_bytes(env["LT_DIST_CACHE_LIMIT"], "LT_DIST_CACHE_LIMIT")
        if env.get("LT_DIST_NODE_ID"):
            values["node_id"] = env["LT_DIST_NODE_ID"]
        if env.get("LT_DIST_STORAGE_OPTIONS"):
            values["options"] = parse_options(env["LT_DIST_STORAGE_OPTIONS"], "LT_DIST_STORAGE_OPTIONS")
        for key, var in (("prefetch_batches", "LT_DIST_PREFETCH"), ("prefetch_threads", "LT_DIST_PREFETCH_THREADS"),
                         ("retries", "LT_DIST_RETRIES"), ("stall_seconds", "LT_DIST_STALL_SECONDS")):
            if env.get(var):
                values[key] = _positive_int(env[var], var)
        return cls(**values)


def parse_options(text: str, name: str = "--storage-options") -> dict:
    """A JSON object of fsspec storage options; the message never echoes the values
    (they may hold secrets)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserInputError(f"{name} is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(value, dict):
        raise UserInputError(f"{name} must be a JSON object like {{\"anon\": true}}")
    return value


def add_storage_flags(parser) -> None:
    """--cache-dir, --cache-limit, --storage-options, --prefetch on an argparse parser."""
    group = parser.add_argument_group("remote data (s3://, gs://, http(s)://)")
    group.set_defaults(**{name: None for name in ("cache_dir", "cache_limit", "storage_options", "prefetch")})
    group.add_argument("--cache-dir", default=argparse.SUPPRESS, help="node-local cache folder (default $LT_DIST_CACHE, else ~/.cache/lt_dist)")
    group.add_argument("--cache-limit", default=argparse.SUPPRESS, help="bytes the cache may hold, e.g. 200G (default $LT_DIST_CACHE_LIMIT, "
                       "else no limit)")
    group.add_argument("--storage-options", metavar="JSON", default=argparse.SUPPRESS, help="fsspec options, e.g. '{\"anon\": true}'")
    group.add_argument("--prefetch", type=int, default=argparse.SUPPRESS, help="batches fetched ahead per loader worker (default 8)")


def export_storage_flags(args) -> None:
    """Put the flags into LT_DIST_* variables, checked first, so that every worker
    process and rank started from here reads the same settings."""
    # a bad flag is named as the user typed it, before it becomes a variable
    if getattr(args, "cache_limit", None) is not None:
        parse_bytes(args.cache_limit, "--cache-limit")
    if getattr(args, "storage_options", None) is not None:
        parse_options(args.storage_options, "--storage-options")
    if getattr(args, "prefetch", None) is not None:
        _positive_int(str(args.prefetch), "--prefetch")
    pairs = (("cache_dir", "LT_DIST_CACHE"), ("cache_limit", "LT_DIST_CACHE_LIMIT"),
             ("storage_options", "LT_DIST_STORAGE_OPTIONS"), ("prefetch", "LT_DIST_PREFETCH"))
    for attr, var in pairs:
        value = getattr(args, attr, None)
        if value is not None:
            os.environ[var] = str(value)
    StorageSettings.from_env()  # a bad value stops here, naming the variable
