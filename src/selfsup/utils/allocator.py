"""Keep freed memory in the process while training on the CPU (glibc's ``mallopt``).

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block larger
than its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and
it gives the top of its heap back to the system past a trim threshold. So every large tensor
of a training step (an activation of a wide network, a (128, 261, 16, 16) logit map) is new
memory each step, and the kernel zero-fills it page by page on first touch: on the 2-core
development machine a fresh 34 MiB tensor cost ~9 ms before the operator wrote a byte, five
times the elementwise operator itself.

:func:`heap_cache` turns both off for the duration of training (``M_MMAP_MAX = 0``: every
block comes from the heap; ``M_TRIM_THRESHOLD`` = never): a step reuses the pages the previous
step freed. On exit it restores glibc's default limits and calls ``malloc_trim(0)``, which
returns the free memory to the system. The cost: the process keeps its peak memory while
training (it reaches that peak every step anyway).

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

# mallopt parameters (malloc.h) and glibc's defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536

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
    glibc). Nested blocks share the outermost one's setting; the last one out restores glibc's
    defaults and trims the heap. The setting is process-wide (like ``torch.set_num_threads``).
    """
    global _depth
    libc = glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, -1)  # as size_t: the largest value, never trim
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
