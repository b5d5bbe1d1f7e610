"""Timing helper shared by the benchmark scripts."""

import time


def timed(fn, *args):
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result
