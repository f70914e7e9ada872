"""Retry a remote operation: transient errors back off and try again, others stop.

Transient: connection reset/refused, timeouts, HTTP 5xx/408/429, S3 SlowDown.
Permanent: missing object (404: FileNotFoundError), no access (401 / 403:
PermissionError), other 4xx. The first transient error of an operation is logged once (without
credentials: only the URL and the error's type and message).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

LOG = logging.getLogger("lt_dist.storage")
T = TypeVar("T")
BASE_DELAY_S = 0.5
MAX_DELAY_S = 10.0


class RemoteError(OSError):
    """A remote operation that failed for good; the message names the URL."""


def status_of(error: BaseException) -> int | None:
    """HTTP status carried by an exception (aiohttp's .status, botocore's response)."""
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def is_transient(error: BaseException) -> bool:
    """True when trying again may succeed."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = status_of(error)
    if status is not None and 400 <= status < 500:
        return status in (408, 429)
    text = f"{type(error).__name__} {error}"
    if "SlowDown" in text or "Throttl" in text:
        return True
    return isinstance(error, (OSError, TimeoutError, ConnectionError)) or status is not None or \
        type(error).__module__.split(".")[0] in ("aiohttp", "botocore", "urllib3", "asyncio")


def underlying(error: BaseException) -> BaseException:
    """The error to classify: fsspec's HTTP `info` turns every failure (a 403, a
    refused connection) into FileNotFoundError raised from the real one."""
    cause = error.__cause__
    if isinstance(error, FileNotFoundError) and isinstance(cause, Exception) and \
            not isinstance(cause, FileNotFoundError):
        return cause
    return error


def backoff_delays(tries: int, base: float = BASE_DELAY_S, cap: float = MAX_DELAY_S) -> list[float]:
    """Seconds to wait before try 2..tries: base, 2 base, 4 base, ... capped."""
    return [min(cap, base * 2**k) for k in range(max(tries - 1, 0))]


def with_retries(operation: Callable[[], T], url: str, tries: int, what: str = "fetch",
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """operation() until it succeeds, a permanent error, or `tries` transient errors.

    Raises RemoteError naming `url` (FileNotFoundError / PermissionError for 404 / 401, 403)."""
    logged = False
    delays = backoff_delays(tries)
    for attempt in range(tries):
        try:
            return operation()
        except Exception as raised:  # classified below; nothing is swallowed silently
            error = underlying(raised)
            if isinstance(error, FileNotFoundError) or status_of(error) == 404:
                raise FileNotFoundError(f"{url}: not found (404) while trying to {what}") from None
            status = status_of(error)
            if type(error) is OSError and str(error).startswith("Forbidden: "):
                status = 403  # gcsfs raises its 403 as a bare OSError("Forbidden: <path>\n<message>")
            if isinstance(error, PermissionError) or status in (401, 403):
                code = f" (HTTP {status})" if status in (401, 403) else ""  # s3fs: PermissionError, no status
                raise PermissionError(f"{url}: access denied{code} while trying to {what}; "
                                      f"check the credentials") from None
            if not is_transient(error) or attempt == len(delays):
                raise RemoteError(f"{url}: {what} failed after {attempt + 1} tries: "
                                  f"{type(error).__name__}: {error}") from error
            if not logged:
                LOG.warning("%s: %s failed (%s: %s); retrying up to %d times with backoff",
                            url, what, type(error).__name__, error, tries - 1)
                logged = True
            sleep(delays[attempt])
    raise AssertionError("unreachable")
