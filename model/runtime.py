"""Process settings for serving on the CPU: keep freed tensor memory in the process.

glibc's malloc gives large blocks (a batch's activations: 9 MB per tower for conv1 at batch
16) back to the operating system when they are freed, with ``mmap``/``munmap`` or by trimming
the heap; the next forward pass then page-faults on every fresh 4 KiB page (tens of thousands
of faults per pass: bench/RESULTS.md, "Allocator"). Raising malloc's mmap and trim
thresholds keeps those pages in the process, so the same memory is reused pass after pass.
The cost: the process keeps its peak memory (one forward pass at the largest batch) instead
of returning it between passes. ``bench/model_bench.py`` measures both settings in one run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["GLIBC_DEFAULT_THRESHOLD", "page_faults", "retain_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # both thresholds' starting values in glibc


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None  # musl has no mallopt


def retain_freed_memory(threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``threshold`` bytes from the heap and never trim it; True if applied.

    ``threshold=GLIBC_DEFAULT_THRESHOLD`` goes back to glibc's starting values (but not to
    its dynamic adjustment, which any mallopt call turns off).
    Does nothing (False) where the C library is not glibc.
    """
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold))) and bool(libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(threshold)))
    if not ok:
        log.warning("mallopt refused a threshold of %d bytes; freed memory goes back to the OS", threshold)
    return ok


def page_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
