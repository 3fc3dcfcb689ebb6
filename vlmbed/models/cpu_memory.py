"""Keep freed tensor memory in the process on CPU, so forwards do not page-fault their activations back in.

PyTorch has no caching allocator on CPU: every tensor is a ``malloc`` and every free a ``free``. glibc serves
blocks above its mmap threshold (128 KiB at start, raised dynamically up to 32 MiB) with a fresh ``mmap`` and
returns them with ``munmap`` on free, and trims the heap's top above its trim threshold. A training step
allocates and frees the same activations every step, so each large activation is faulted in page by page
(zeroed by the kernel) again every step: measured on a 2-core CPU, the elementwise ops of a 16-row batch of a
19M-parameter model ran 5-9x slower than on warm memory, and a training forward and backward took 15-25%
longer (``docs/benchmarks.md``).

:func:`keep_freed_memory` sets glibc's thresholds (``mallopt``, the same as the ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` environment variables) so that blocks up to 32 MiB come
from the heap and freed memory stays there for the next step. The cost is that the process keeps its peak heap
(a training or encoding process holds its peak anyway). It is applied once per process when an
:class:`~vlmbed.models.embedder.Embedder` is built on CPU; it does nothing where the C library is not glibc,
where the user set any of those variables or preloads another allocator (jemalloc, tcmalloc), or where
``VLMBED_CPU_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["keep_freed_memory"]

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")

@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds once per process (see the module docstring); True where they are set."""
    return _apply()


def _apply() -> bool:
    if os.environ.get("VLMBED_CPU_MALLOC", "").lower() == "default":
        return False
    if any(k in os.environ for k in USER_SETTINGS):
        return False  # the user's own allocator settings win
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))


def _glibc():
    """The process's C library where it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
