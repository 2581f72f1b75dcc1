"""Keep freed memory in the process while training on the CPU (glibc's ``mallopt``).

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block larger than
its mmap threshold with a fresh ``mmap`` and unmaps it on ``free``, and it gives the top of its
heap back to the system past a trim threshold; both thresholds start low (128 KiB) and rise as
the process frees large blocks. A training step allocates and frees the same large tensors
every step, so with these defaults much of a step's memory is new memory, which the kernel
zero-fills page by page on first touch: on the 2-core development machine a fresh 34 MiB
tensor cost ~9 ms before the operator wrote a byte, five times the elementwise operator itself.

:func:`heap_cache` sets, for the duration of training, the mmap threshold to glibc's largest
(32 MiB: blocks up to that size come from the heap) and the trim threshold to "never", so a
step reuses the heap pages the previous step freed. Blocks above 32 MiB are still mapped and
unmapped (keeping them would let the heap fragment: ``posix_memalign``'s padding can strand a
freed block of exactly the size asked for again, and the peak resident set of a full-width
ResNet-18 grew by a third to a half when every block came from the heap). On exit the
thresholds go to the values glibc's own adjustment reaches after large blocks have been freed
(mmap 32 MiB, trim 64 MiB) and ``malloc_trim(0)`` returns the free memory to the system. The
cost: the process keeps its heap at the step's peak while training.

Only glibc (Linux) has these knobs; elsewhere :func:`heap_cache` does nothing and says so in
its return value.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator

__all__ = ["glibc", "heap_cache", "heap_cache_active"]

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""

_lock = threading.Lock()
_depth = 0


@functools.lru_cache(maxsize=1)
def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and ``malloc_trim``),
    else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc if libc.mallopt and libc.malloc_trim else None
    except (OSError, AttributeError, TypeError):
        return None


def heap_cache_active() -> bool:
    """Whether a :func:`heap_cache` block is open in this process."""
    return _depth > 0


@contextlib.contextmanager
def heap_cache(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed memory stays in the process for the next allocation.

    Yields whether the cache is on (False when ``enabled`` is False or the C library is not
    glibc). Nested blocks share the outermost one's setting; the last one out sets the
    thresholds where glibc's own adjustment settles (module docstring) and trims the heap. The
    setting is process-wide (like ``torch.set_num_threads``).
    """
    global _depth
    libc = glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, -1)  # as size_t: the largest value, never trim
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:  # where glibc's adjustment ends up after freeing large blocks
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
                libc.malloc_trim(0)
