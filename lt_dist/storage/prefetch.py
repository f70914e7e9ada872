"""Prefetcher: download exactly what the next batches read, in background threads.

The sampler knows every future row of this rank, so nothing is guessed: while
batch b is read, the objects of batches b+1 .. b+N are fetched (N = window) and
pinned in the cache so that eviction cannot take them; an object leaves the pin
set when the last batch of the window that needs it has been read.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

B = TypeVar("B")


class Prefetcher:
    """Reference-counted background fetches of keys (e.g. shard ids).

    fetch_and_pin(key) -> token runs in a worker thread; unpin(token) when no batch
    of the window needs the key any more."""

    def __init__(self, fetch_and_pin: Callable[[Hashable], object], unpin: Callable[[object], None],
                 threads: int):
        if threads < 1:
            raise ValueError(f"prefetch threads must be >= 1, got {threads}")
        self._fetch, self._unpin = fetch_and_pin, unpin
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lt-prefetch")
        self._futures: dict[Hashable, Future] = {}
        self._refs: Counter = Counter()

    def acquire(self, keys: Iterable[Hashable]) -> None:
        """Start fetching each key not already fetched or in flight."""
        for key in set(keys):
            self._refs[key] += 1
            if key not in self._futures:
                self._futures[key] = self._pool.submit(self._fetch, key)

    def wait(self, keys: Iterable[Hashable]) -> None:
        """Block until every key is fetched; re-raises a fetch's error."""
        for key in set(keys):
            self._futures[key].result()

    def release(self, keys: Iterable[Hashable]) -> None:
        """One batch that needed `keys` is done; unpin keys no batch needs."""
        for key in set(keys):
            self._refs[key] -= 1
            if self._refs[key] == 0:
                del self._refs[key]
                future = self._futures.pop(key)
                if future.done() and future.exception() is None:
                    self._unpin(future.result())
                else:  # still running or failed: unpin when (if) it finishes
                    future.add_done_callback(lambda f: f.exception() is None and self._unpin(f.result()))

    def close(self) -> None:
        """Drop every pin and stop the threads (running downloads finish first)."""
        for key in list(self._refs):
            self._refs[key] = 1
            self.release([key])
        self._pool.shutdown(wait=True, cancel_futures=True)

    def ahead(self, batches: Iterable[B], keys_of: Callable[[B], Iterable[Hashable]], window: int) -> Iterator[B]:
        """Yield `batches` in order, each once its keys are fetched, with the keys of
        the next `window` batches fetching meanwhile."""
        if window < 1:
            raise ValueError(f"prefetch window must be >= 1 batch, got {window}")
        queue: deque = deque()
        try:
            for batch in batches:
                keys = list(keys_of(batch))
                self.acquire(keys)
                queue.append((batch, keys))
                if len(queue) > window:
                    yield from self._hand_out(queue)
            while queue:
                yield from self._hand_out(queue)
        finally:
            self.close()

    def _hand_out(self, queue: deque) -> Iterator:
        batch, keys = queue.popleft()
        self.wait(keys)
        yield batch  # the caller reads the batch's data before asking for the next
        self.release(keys)


def window_bytes(keys_per_batch: Sequence[Sequence[int]], key_bytes: Sequence[int], window: int) -> int:
    """Most bytes `Prefetcher.ahead(..., window)` keeps pinned at once.

    While batch b is read, its keys and those of batches b+1 .. b+window are pinned:
    the answer is the largest total size of the distinct keys of window + 1
    consecutive batches. keys_per_batch: per batch, its keys (indexes into key_bytes).
    """
    if window < 1:
        raise ValueError(f"prefetch window must be >= 1 batch, got {window}")
    refs: Counter = Counter()
    held = largest = 0
    for end, keys in enumerate(keys_per_batch):
        for key in set(keys):  # the batch entering the window
            refs[key] += 1
            held += key_bytes[key] if refs[key] == 1 else 0
        largest = max(largest, held)
        if end >= window:  # the batch leaving it
            for key in set(keys_per_batch[end - window]):
                refs[key] -= 1
                held -= key_bytes[key] if refs[key] == 0 else 0
    return largest
