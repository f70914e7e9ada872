"""Retries: transient errors back off and succeed, permanent ones stop at the first try."""
import pytest

from lt_dist.storage.retry import RemoteError, backoff_delays, is_transient, with_retries


class HttpStatusError(Exception):
    def __init__(self, status):
        super().__init__(f"status {status}")
        self.status = status


def flaky(errors, result="done"):
    """An operation that raises `errors` one per call, then returns `result`."""
    calls = []

    def operation():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result
    return operation, calls


@pytest.mark.parametrize("error, transient", [
    (ConnectionResetError(), True), (TimeoutError(), True), (HttpStatusError(503), True),
    (HttpStatusError(429), True), (OSError("SlowDown: reduce your request rate"), True),
    (FileNotFoundError(), False), (PermissionError(), False), (HttpStatusError(403), False),
    (HttpStatusError(400), False), (ValueError("bad"), False)])
def test_transient_or_permanent(error, transient):
    assert is_transient(error) is transient


def test_backoff_doubles_and_is_capped():
    assert backoff_delays(7, base=0.5, cap=10.0) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff_delays(1) == []


def test_transient_errors_are_retried_with_backoff_and_logged_once(caplog):
    operation, calls = flaky([ConnectionResetError("reset"), HttpStatusError(502)])
    slept = []
    assert with_retries(operation, "http://h/x", tries=5, sleep=slept.append) == "done"
    assert len(calls) == 3 and slept == [0.5, 1.0]
    assert sum("retrying" in record.message for record in caplog.records) == 1


def test_budget_spent_raises_naming_the_url():
    operation, calls = flaky([ConnectionRefusedError("refused")] * 10)
    with pytest.raises(RemoteError, match=r"s3://b/k: download failed after 3 tries: ConnectionRefusedError"):
        with_retries(operation, "s3://b/k", tries=3, what="download", sleep=lambda s: None)
    assert len(calls) == 3


@pytest.mark.parametrize("error, kind, text", [(FileNotFoundError(), FileNotFoundError, "not found \\(404\\)"),
                                                (HttpStatusError(403), PermissionError, "access denied \\(HTTP 403\\)"),
                                                (HttpStatusError(401), PermissionError, "access denied \\(HTTP 401\\)"),
                                                (PermissionError(), PermissionError, "access denied while")])
def test_404_and_403_stop_at_once(error, kind, text):
    operation, calls = flaky([error])
    with pytest.raises(kind, match=f"gs://b/k: {text}"):
        with_retries(operation, "gs://b/k", tries=5, sleep=lambda s: pytest.fail("slept"))
    assert len(calls) == 1


def wrapped(cause: Exception) -> FileNotFoundError:
    """What fsspec's HTTP info raises for any failure: FileNotFoundError from the real one."""
    try:
        raise FileNotFoundError("http://h/x") from cause
    except FileNotFoundError as error:
        return error


def test_a_not_found_that_wraps_a_403_or_a_refused_connection_is_classified_by_its_cause():
    operation, calls = flaky([wrapped(HttpStatusError(403))])
    with pytest.raises(PermissionError, match=r"access denied \(HTTP 403\)"):
        with_retries(operation, "http://h/x", tries=5, sleep=lambda s: pytest.fail("slept"))
    operation, calls = flaky([wrapped(ConnectionRefusedError()), wrapped(HttpStatusError(502))])
    assert with_retries(operation, "http://h/x", tries=5, sleep=lambda s: None) == "done" and len(calls) == 3
    operation, calls = flaky([wrapped(HttpStatusError(404))])
    with pytest.raises(FileNotFoundError, match=r"not found \(404\)"):
        with_retries(operation, "http://h/x", tries=5, sleep=lambda s: pytest.fail("slept"))
