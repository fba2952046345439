"""Make glibc hand large freed blocks back to the kernel at once (worker memory with 4K images).

Why: glibc serves blocks above ``M_MMAP_THRESHOLD`` with their own ``mmap`` and returns them on
``free`` — but by default the threshold *rises* to the size of every such block freed (up to 32 MB).
After the first 4K image, the 20-30 MB bodies, base64 strings and decoded images of later calls are
carved out of the per-thread malloc arenas instead, and a worker with 50 threads keeps whatever each
arena ever held. Measured by ``bench/overhead.py`` (one worker, 50 threads, 22.6 MB 4K PNGs, 4 decode
slots): 1,639 MB peak with the default, 793 MB with the threshold pinned at 1 MiB. Pinning it (any
explicit value turns the dynamic adjustment off) costs one ``mmap``/``munmap`` pair per large block,
which is nothing beside a multi-second upstream call.

``MALLOC_MMAP_THRESHOLD_`` in the environment wins (glibc reads it itself); on other C libraries
(musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("nanobatch.worker")

#: ``M_MMAP_THRESHOLD`` from glibc's ``<malloc.h>``.
M_MMAP_THRESHOLD = -3


def pin_mmap_threshold(threshold: int) -> bool:
    """Pin glibc's mmap threshold to ``threshold`` bytes; ``False`` when not applied (0, env, not glibc)."""
    if threshold <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not applied:
        log.info("mallopt(M_MMAP_THRESHOLD, %d) refused; the C library default stays", threshold)
    return applied
