"""Fixed-size parts: how files are split, a bounded pool of reusable read buffers, and bounded ordered parallel work."""

from __future__ import annotations  # PEP 563 (public), for type-checking imports

import os
import threading
from collections import deque

from drtool.snapshot.directio import aligned_buffer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, docs/benchmarks.md)
if TYPE_CHECKING:  # types only: neither is imported on an unchanged re-run's path (docs/benchmarks.md)
    from collections.abc import Callable, Iterable, Iterator
    from concurrent.futures import Future, ThreadPoolExecutor
    from typing import TypeVar

    T = TypeVar("T")
    R = TypeVar("R")

MiB = 1 << 20
# 16 MiB parts: big enough that per-request and per-file overheads vanish next to hashing (hashlib releases the
# GIL on buffers this size), small enough that workers + 2 buffers in flight stay far below the 300 MiB budget
# and that a changed region of a shard only re-uploads a few parts. Measured in docs/benchmarks.md.
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_WORKERS = 4

def part_sizes(size: int, part_size: int) -> list[int]:
    """The sizes of a file's parts: all `part_size` but the last; none for an empty file."""
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest else [])


class BufferPool:
    """A fixed set of part-sized, page-aligned buffers (so that whole parts can be read and written with O_DIRECT,
    drtool.snapshot.directio). Taking one blocks while all are in use, which is what bounds memory:
    a reader can never run more than `count` parts ahead of the threads that hash and store them. A buffer
    handed to several threads goes back to the pool when the last of them releases it."""

    def __init__(self, count: int, size: int):
        from queue import SimpleQueue  # made only when something is read (an unchanged re-run reads nothing)

        self.size = size
        self._free: SimpleQueue[bytearray] = SimpleQueue()
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()
        self._unmade = count  # buffers are made on first need: a run with nothing to read allocates nothing

    def acquire(self, users: int = 1) -> bytearray:
        with self._lock:
            make = self._unmade > 0 and self._free.empty()
            self._unmade -= make
        buf = aligned_buffer(self.size) if make else self._free.get()
        with self._lock:
            self._users[id(buf)] = users
        return buf

    def release(self, buf: bytearray, all_users: bool = False) -> None:
        """One user is done with `buf` (with all_users, every one: an error path); the last returns it."""
        with self._lock:
            left = 0 if all_users else self._users[id(buf)] - 1
            if left:
                self._users[id(buf)] = left
                return
            del self._users[id(buf)]
        self._free.put(buf)


def read_into(fd: int, buf: bytearray, offset: int, length: int) -> memoryview:
    """Read `length` bytes at `offset` into `buf` (one syscall per call when the file is in the page cache);
    a view of what was read, shorter only at end of file."""
    view = memoryview(buf)[:length]
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return view[:got]


def ordered_map(executor: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """fn over items on the executor, results yielded in item order, at most `window` submitted ahead.
    Bounded lookahead is what keeps memory flat when each result holds a part's bytes."""
    pending: deque[Future[R]] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(executor.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
