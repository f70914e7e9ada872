"""Dataset addresses: a local path or a URL (s3://, gs://, gcs://, http://, https://)."""
from __future__ import annotations

import hashlib
import posixpath

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")


def scheme(address: str) -> str:
    """'s3' for 's3://b/k', '' for a local path (file:// counts as local)."""
    head, sep, _ = str(address).partition("://")
    return head.lower() if sep and head.lower() in REMOTE_SCHEMES else ""


def is_url(address: str) -> bool:
    """True when `address` names an object store or web server, not a local path."""
    return bool(scheme(address))


def join_url(base: str, *parts: str) -> str:
    """base/part/...: '/'-joined, one slash between parts whatever base ends with."""
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def split_url(url: str) -> tuple[str, str]:
    """(parent, name) of a URL: 's3://b/ds/train/x.tar' -> ('s3://b/ds/train', 'x.tar')."""
    parent, _, name = url.rstrip("/").rpartition("/")
    return parent, name


def url_key(url: str) -> str:
    """A short, stable folder name for a URL (its scheme, last component and a hash).

    The hash keeps two buckets' 'train' apart; the readable part helps a person
    looking at the cache folder."""
    digest = hashlib.sha256(url.rstrip("/").encode("utf-8")).hexdigest()[:16]
    name = posixpath.basename(url.rstrip("/")) or "root"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
    return f"{scheme(url)}-{safe}-{digest}"
