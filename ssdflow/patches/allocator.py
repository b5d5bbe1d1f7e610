"""glibc malloc settings for a process that drives a local Beam job (Linux only).

A local job's driver is its shuffle service: every stage's output passes through it in buffers of up
to 10 MB, received by gRPC threads. With glibc's defaults each of those threads may get its own
arena (up to 8 per core), and freed buffers below the dynamic mmap threshold stay in the arenas, so
the driver's resident memory keeps the high-water mark of the stages it has run. Two arenas and a
fixed 128 KiB mmap threshold (large buffers are mapped, and handed back to the system when freed)
cut the ingest driver's peak at 100,000 images from 463 to 325 MB (docs/benchmarks.md).

Only for the driver: the same settings cost the workers' image decoding 17 % more CPU (each image's
bytes and pixels are mapped and unmapped), and a process that goes on to train (a Prefect flow)
is left alone, TensorFlow's allocations not being measured with them. So ``ssdflow ingest``, a
process that runs nothing but that job, sets them on itself. Settings a user gave in the
environment win; elsewhere than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's mallopt parameter numbers (malloc.h)
ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")  # the same settings as glibc reads them at start-up


def tune_this_process() -> bool:
    """Applies the settings to this running process (for allocations from now on) unless its
    environment sets either; returns whether glibc took them."""
    if not sys.platform.startswith("linux") or any(key in os.environ for key in ENV):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_ARENA_MAX, ARENA_MAX)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
