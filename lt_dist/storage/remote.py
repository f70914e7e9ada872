"""RemoteStore: get, put and stat objects by URL. The only import of fsspec.

fsspec picks the protocol's filesystem (s3fs for s3://, gcsfs for gs://, its own
aiohttp client for http(s)://); credentials come the way each ecosystem expects
(AWS variables and profiles, AWS_ENDPOINT_URL, GCS application default credentials;
STORAGE_EMULATOR_HOST: a GCS emulator, anonymous unless the options give a token).
StorageSettings.options go to fsspec as they are and are never logged.
"""
from __future__ import annotations

import logging
import os

from lt_dist.storage.retry import with_retries
from lt_dist.storage.settings import StorageSettings
from lt_dist.storage.urls import scheme


class RemoteStore:
    """Whole-object transfers with retries; one filesystem object per protocol."""

    def __init__(self, settings: StorageSettings):
        self.settings = settings
        self._filesystems: dict[str, object] = {}
        self._pid = os.getpid()

    def _fs(self, url: str):
        protocol = scheme(url)
        if self._pid != os.getpid():  # a forked loader worker: fsspec's clients are not fork-safe
            self._filesystems, self._pid = {}, os.getpid()
        if protocol not in self._filesystems:
            try:
                import fsspec
            except ImportError:
                raise ImportError(f"reading {url} needs fsspec (and s3fs / gcsfs / aiohttp): "
                                  f"pip install 'lt-dist[remote]'") from None
            cls, options = fsspec.get_filesystem_class("gcs" if protocol == "gs" else protocol), self.settings.options
            if protocol == "gs":
                logging.getLogger("gcsfs").addFilter(_drop_gcsfs_tracebacks)
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    cls, options = _gcs_emulator_client(options)
            if protocol in ("http", "https"):
                options = _with_stall_timeout(options, self.settings.stall_seconds)
            # skip_instance_cache: a new endpoint in the environment gets a new client
            self._filesystems[protocol] = cls(skip_instance_cache=True, **options)
        return self._filesystems[protocol]

    def download(self, url: str, local_path: str) -> int:
        """Copy the object at `url` to `local_path` (overwritten); returns its bytes."""
        fs = self._fs(url)

        def fetch() -> int:
            fs.get_file(url, local_path)
            return os.path.getsize(local_path)
        return with_retries(fetch, url, self.settings.retries, "download")

    def upload(self, local_path: str, url: str) -> None:
        """Copy a local file to `url` (the object is replaced whole, never partly)."""
        fs = self._fs(url)
        with_retries(lambda: fs.put_file(local_path, url), url, self.settings.retries, "upload")
        fs.invalidate_cache()

    def info(self, url: str) -> dict | None:
        """fsspec's description of the object (size, and ETag / mtime where the store
        gives them), or None when there is none (404)."""
        fs = self._fs(url)
        try:
            return with_retries(lambda: fs.info(url), url, self.settings.retries, "stat")
        except FileNotFoundError:
            return None

    def size(self, url: str) -> int | None:
        """Bytes of the object, or None when there is none (404)."""
        info = self.info(url)
        return None if info is None or info.get("size") is None else int(info["size"])

    def exists(self, url: str) -> bool:
        """True when an object is at `url`."""
        return self.size(url) is not None

    def remove(self, url: str) -> None:
        """Delete the object at `url` if there is one."""
        fs = self._fs(url)
        try:
            with_retries(lambda: fs.rm_file(url), url, self.settings.retries, "delete")
        except FileNotFoundError:
            pass
        fs.invalidate_cache()


def _gcs_emulator_client(options: dict) -> tuple[type, dict]:
    """gcsfs's JSON-API filesystem for a GCS emulator (STORAGE_EMULATOR_HOST, which gcsfs
    reads itself), anonymous unless the options name a token. gcsfs's default class asks
    the gRPC storage-control API for each bucket's layout, which an emulator does not
    serve: every operation would wait out a 60 s timeout, then fall back to JSON anyway."""
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem, {"token": "anon", **options}


def _drop_gcsfs_tracebacks(record: logging.LogRecord) -> bool:
    """gcsfs logs each request it gives up on (a 401, say) with a traceback, before it
    raises; with_retries then raises the same error in one line naming the URL."""
    return not (record.funcName == "retry_request" and record.levelno >= logging.ERROR)


def _with_stall_timeout(options: dict, seconds: int) -> dict:
    """fsspec HTTP options whose aiohttp session gives up on a connection that connects or
    sends nothing for `seconds` (aiohttp's default waits 5 minutes per request, then the
    retries would wait again): a stalled server becomes a transient, retried error.
    A timeout the user gave in client_kwargs wins."""
    import aiohttp

    client_kwargs = dict(options.get("client_kwargs") or {})
    client_kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds))
    return {**options, "client_kwargs": client_kwargs}
