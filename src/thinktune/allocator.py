"""Keep freed memory in the process instead of handing it back to the OS after every tensor.

glibc's malloc serves blocks above a threshold (128 KiB at first, adapting up to 32 MiB) with ``mmap`` and
returns them on ``free``, and trims the heap top above 128 KiB. A training step allocates and frees
activations of tens of MB thousands of times, so every reuse page-faults fresh zeroed pages in. On the
SmolLM2 LoRA benchmark's update that was 1.4 million page faults, 9 s of kernel time and 16.8 s of wall
time; with freed memory kept, 27 thousand faults and 8.5 s (``python benchmarks/allocator.py``). The cost is
a peak RSS that stays at its high-water mark; set ``THINKTUNE_KEEP_FREED_MEMORY=0`` to opt out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers from <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap and go back to it


def keep_freed_memory() -> bool:
    """Tell glibc malloc to reuse freed blocks instead of unmapping them. Returns whether it applied (glibc only)."""
    if not sys.platform.startswith("linux") or os.environ.get("THINKTUNE_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    # One arena: BLAS threads' scratch buffers otherwise live in per-thread arenas, whose heaps are capped at
    # 64 MiB and shrink back to the OS on their own.
    settings = ((M_MMAP_THRESHOLD, KEEP_BELOW), (M_TRIM_THRESHOLD, KEEP_BELOW), (M_ARENA_MAX, 1))
    return all([bool(mallopt(param, value)) for param, value in settings])
