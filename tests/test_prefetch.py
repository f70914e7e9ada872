"""Prefetcher: batches come out in order, each key fetched once, pins bounded by the window."""
import threading

import pytest

import numpy as np

from lt_dist.storage.prefetch import Prefetcher, window_bytes


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


def brute_force_window_bytes(batches, sizes, window):
    """The formula as stated: the largest union of window + 1 consecutive batches' keys."""
    return max(sum(sizes[key] for key in set().union(*map(set, batches[start:start + window + 1])))
               for start in range(len(batches)))


@pytest.mark.parametrize("window", [1, 2, 5, 40])
def test_window_bytes_is_the_largest_union_of_window_plus_one_batches(window):
    rng = np.random.default_rng(window)
    sizes = rng.integers(1, 1000, size=12).tolist()
    batches = [rng.integers(0, 12, size=rng.integers(1, 4)).tolist() for _ in range(30)]
    assert window_bytes(batches, sizes, window) == brute_force_window_bytes(batches, sizes, window)
    with pytest.raises(ValueError, match="window must be >= 1"):
        window_bytes(batches, sizes, 0)


def test_window_bytes_is_what_the_prefetcher_pins_at_most():
    """Measured on the real Prefetcher: with every fetch finished before each batch is
    read, the bytes pinned reach the bound exactly, and never pass it."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 1000, size=9).tolist()
    batches = [rng.integers(0, 9, size=2).tolist() for _ in range(25)]
    pins = Pins()
    prefetcher = Prefetcher(pins.fetch_and_pin, pins.unpin, threads=3)
    most = 0
    for _ in prefetcher.ahead(batches, lambda b: b, window=3):
        for future in list(prefetcher._futures.values()):  # let the look-ahead catch up
            future.result()
        with pins.lock:
            most = max(most, sum(sizes[key] for key in pins.held))
    assert most == window_bytes(batches, sizes, 3)
