"""Prefetcher: batches come out in order, each key fetched once, pins bounded by the window."""
import threading

import pytest

from lt_dist.storage.prefetch import Prefetcher


class Pins:
    """Counts fetches and the pins held at any moment."""

    def __init__(self):
        self.fetched, self.held, self.most = [], set(), 0
        self.lock = threading.Lock()

    def fetch_and_pin(self, key):
        with self.lock:
            self.fetched.append(key)
            self.held.add(key)
            self.most = max(self.most, len(self.held))
        return key

    def unpin(self, token):
        with self.lock:
            self.held.remove(token)


def test_batches_in_order_keys_fetched_once_pins_bounded_and_released():
    batches = [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 0]]
    pins = Pins()
    out = []
    for batch in Prefetcher(pins.fetch_and_pin, pins.unpin, threads=2).ahead(batches, lambda b: b, window=2):
        assert set(batch) <= pins.held  # every key of the batch is fetched and pinned while it is read
        out.append(batch)
    assert out == batches
    assert sorted(pins.fetched) == [0, 0, 1, 2, 3, 4, 5]  # 0 came back after leaving the window
    assert pins.most <= 5  # keys of the batch being read and the 2 after it (3 batches x 2, shared ones once)
    assert pins.held == set()


def test_a_fetch_error_reaches_the_consumer_and_pins_are_released():
    pins = Pins()

    def fetch(key):
        if key == 3:
            raise FileNotFoundError("http://h/3: not found (404)")
        return pins.fetch_and_pin(key)
    stream = Prefetcher(fetch, pins.unpin, threads=1).ahead([[1], [2], [3], [4]], lambda b: b, window=1)
    assert next(stream) == [1] and next(stream) == [2]
    with pytest.raises(FileNotFoundError, match="404"):
        next(stream)
    assert pins.held == set()
