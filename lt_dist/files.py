"""File helpers shared by every layer (no lt-dist imports): content hashes."""
from __future__ import annotations

import hashlib


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB pieces (constant memory for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
