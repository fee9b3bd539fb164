"""Keep freed host memory in the process instead of handing it back to the OS after every step.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it on free. A CPU training step allocates activations and gradients of that size dozens
of times, so each step page-faults all of them in again and the kernel zero-fills every page:
on VPT-1x (2 cores) that was ~10% of the fp32 step and ~25% of the bf16 step. Serving them from
the heap and never trimming it makes later steps reuse the same pages, as CUDA's caching
allocator does on a GPU. The cost is that the process keeps its peak footprint until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Tell glibc to serve large blocks from the heap and never trim it; False where that is not glibc.

    Affects allocations made after the call (forked data-loader workers inherit it).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
