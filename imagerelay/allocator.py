"""glibc malloc tuning for a process that moves 25-33 MB image buffers.

glibc serves large blocks with mmap only below a *dynamic* threshold that grows (up
to 32 MB) each time such a block is freed; after that, 4K answers land in the heap
arenas, fragment them, and stay in RSS. Worker threads (image decoding, file
writes) each get an arena of their own, which multiplies it. Pinning the mmap
threshold at 1 MB returns every large buffer to the OS when freed, and two arenas
are plenty for a process whose Python code holds the GIL anyway. Measured with
bench/run.py: see bench/RESULTS.md. A no-op where glibc is absent.

Pinning the mmap threshold also freezes the *trim* threshold at its 128 KB default, so
every free that left more than 128 KB at the top of a heap handed it back (``brk`` or
``madvise``) and the next sub-MB buffer faulted it in again: each socket read of an
upstream answer (up to 256 KB), each body chunk, each 1 MB slice decoded to check or
store base64. Decoding a 4K image in slices took 66,000 page faults and twice the CPU
(11 ms against 5.8 ms in a microbenchmark: 33 MB decoded in 512 KB slices). The trim threshold is raised so that up to
``trim_threshold`` of free heap stays mapped and warm; large answers still come and go
as mappings of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
M_TRIM_THRESHOLD = -1


def tune_malloc(mmap_threshold: int = 1024 * 1024, arena_max: int = 2, trim_threshold: int = 32 * 1024 * 1024) -> bool:
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return (
        bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
        and bool(mallopt(M_ARENA_MAX, arena_max))
        and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    )


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running server.

    Everything built at start-up (catalog, routes, libraries) lives for the whole
    process: ``gc.freeze()`` moves it out of the generations the collector walks.
    A request allocates a few hundred short-lived container objects, so with the
    default threshold of 700 a young collection ran every call or two; request
    objects do not form cycles worth chasing that often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
