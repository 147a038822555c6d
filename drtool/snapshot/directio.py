"""Large parts bypass the page cache: page-aligned part buffers, and O_DIRECT reads and writes of whole parts where
the file system allows it, with ordinary I/O where it does not (tmpfs and some FUSE or network file systems answer
EINVAL) and for small files and unaligned tails.

Why: a snapshot's blobs and a restore's weights are written once and read rarely, so caching them only pushes out
what a serving host does keep in memory. And on our VMs, memory the kernel takes for the page cache is faulted in
from the host at ~3 s of system time per GB: measured, buffered write + fsync of 2 GiB took 6.7 s (6.1 s system),
O_DIRECT 1.8 s (0.3 s system) (docs/benchmarks.md)."""

import errno
import os

ALIGN = 4096  # O_DIRECT wants buffer address, file offset and length aligned to the logical block size (<= 4 KiB)
MIN_DIRECT = 1 << 20  # below this a file goes through the page cache: a direct request's latency outweighs the copy
O_DIRECT = getattr(os, "O_DIRECT", 0)


def round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def aligned_buffer(size: int):
    """A writable, page-aligned buffer of at least `size` bytes (anonymous memory, rounded up to ALIGN)."""
    import mmap

    return mmap.mmap(-1, max(round_up(size), ALIGN))


def _address(view) -> int | None:
    """Where a writable buffer starts in memory; None for a read-only one (such as bytes: never ours)."""
    import ctypes

    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return None


def is_aligned(view) -> bool:
    """Whether a buffer starts on an ALIGN boundary (read-only buffers, such as bytes, are never ours: False)."""
    address = _address(view)
    return address is not None and address % ALIGN == 0


def direct_span(offset: int, view) -> tuple[int, int]:
    """The slice [start, end) of `view`, which is to be written at file `offset`, that O_DIRECT can write: aligned
    in the file and in memory, at least ALIGN long; (0, 0) when there is none. The bytes before and after it share
    their file blocks with the neighbouring writes and go through the page cache.

    A part that starts at an unaligned file offset (a safetensors tensor's parts start where the tensor does) can
    only go around the page cache if its bytes sit in memory at the same offset modulo ALIGN: see `place`."""
    start = -offset % ALIGN
    end = len(view) - (offset + len(view)) % ALIGN
    address = _address(view)
    if end - start < ALIGN or address is None or (address + start) % ALIGN:
        return 0, 0
    return start, end


def place(buf, data, offset: int) -> memoryview:
    """`data` (a view of `buf` from its start, or other bytes) copied into `buf` at `offset` modulo ALIGN, and a view
    of it there: so that its aligned middle can be written with O_DIRECT at file `offset` (direct_span). `buf` must
    hold len(data) + ALIGN bytes. A copy of a 16 MiB part takes under 1 ms here; writing it through the page cache
    costs ~50 ms of system time on our VMs (docs/benchmarks.md)."""
    shift = offset % ALIGN
    view = memoryview(buf)
    view[shift:shift + len(data)] = data  # memoryview assignment copies overlapping ranges safely (memmove)
    return view[shift:shift + len(data)]


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for an open file; False when the file system refuses it."""
    import fcntl

    if not O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | O_DIRECT) if on else (flags & ~O_DIRECT))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def write_at(fd: int, view: memoryview, offset: int, direct: bool) -> bool:
    """pwrite all of `view` at `offset`. `direct` says O_DIRECT is on for `fd`; if the file system refuses a direct
    write after all (EINVAL), O_DIRECT is turned off and the rest goes through the page cache. Returns whether
    O_DIRECT is still on."""
    done = 0
    while done < len(view):
        try:
            done += os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            if not (direct and exc.errno == errno.EINVAL):
                raise
            direct = False
            set_direct(fd, False)
    return direct


def write_new_file(path: str, data, mode: int = 0o644) -> int:
    """Create `path` (it must not exist) holding `data`, fsynced. The aligned head of a large aligned buffer is written
    with O_DIRECT, the rest through the page cache. Returns the bytes written directly. On error the file is removed."""
    view = memoryview(data)
    n = len(view)
    head = n - n % ALIGN if O_DIRECT and n >= MIN_DIRECT and is_aligned(view) else 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        direct = bool(head) and set_direct(fd, True) and write_at(fd, view[:head], 0, True)
        if direct:
            set_direct(fd, False)
        write_at(fd, view[head if direct else 0:], head if direct else 0, False)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise
    os.close(fd)
    return head if direct else 0


def read_file_into(fd: int, size: int, into) -> memoryview | None:
    """Read the file open at `fd` (`size` bytes by fstat) into `into` and return a view of what was read, or None
    when it does not fit. A large file read into an aligned buffer goes around the page cache. What was read is the
    caller's to check (a file that grew or shrank meanwhile reads longer or shorter)."""
    cap = round_up(size)
    if cap > len(into):
        return None
    view = memoryview(into)[:cap]
    direct = size >= MIN_DIRECT and is_aligned(view) and set_direct(fd, True)
    got = 0
    try:
        while got < cap:
            try:
                n = os.preadv(fd, [view[got:]], got)
            except OSError as exc:
                if not (direct and exc.errno == errno.EINVAL):
                    raise
                direct = False
                set_direct(fd, False)
                continue
            if n == 0:
                break
            got += n
            if direct and got % ALIGN:
                break  # a short direct read ends only at end of file
    finally:
        if direct:
            set_direct(fd, False)
    return view[:got]
