"""Process-wide memory settings for serving: freed image memory stays in the process for
the next image, and the objects start-up built stay out of the garbage collector's way.

Each image allocates a few buffers of hundreds of kilobytes to a few megabytes (the
decoded pixels, the resize's intermediate, the batch), frees them, and allocates the same
sizes again for the next one. glibc's malloc serves blocks that size from mmap, or trims
them off the top of its heap when they are freed, so every image touched fresh pages
from the kernel: ~280 page faults to preprocess a 600x400 JPEG, half of its 3.8 ms here.
Raising both of malloc's thresholds keeps those blocks in the heap for reuse: 1.6-2.0 ms,
with 15x fewer faults (docs/guide/preprocessing.md, "Decoding").

Both thresholds must move together: raising either alone switches off glibc's own
adjustment of the other, and preprocessing got slower still. The price is memory kept
after large images: ~20-55 MB more RSS after a burst of photos up to 3000x2250; lower
thresholds kept less but sent those photos back to mmap, slower than glibc's defaults.

Python's full collections walk every tracked object, and a served process starts with
~150k of them (aiohttp, numpy, OpenCV, the model's runtime; numba too, then): 40-110 ms a full
collection, during which the event loop answers nothing. Requests that outlive a young
collection (hundreds in flight under load) reach the old generation and trigger a full
one every second or so in a storm of refusals. Freezing what start-up built (gc.freeze)
leaves the full collections only what serving made (docs/performance/history.md, "Start-up's objects are frozen").
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (glibc's ceiling is 32 MiB on 64-bit); larger
# ones, a 12-megapixel photo's pixels, still come from mmap and go straight back.
MMAP_THRESHOLD = 16 * 1024 * 1024
# Free memory at the top of a heap beyond this goes back to the kernel: what a process
# holds on to after a burst of large images.
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set malloc's thresholds for this process; False where the C library is not glibc
    (musl, macOS), which keeps its own behaviour."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        log.debug("no mallopt in this C library: malloc keeps its defaults")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def trim_heap() -> bool:
    """Give the free memory in malloc's heaps back to the kernel (malloc_trim(3)): what
    loading a model allocated and freed (packing its weights, reading its file) would
    otherwise stay in the RSS for good under TRIM_THRESHOLD. Once, after start-up; the
    blocks serving reuses are allocated after it. False where the C library has none."""
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    return bool(malloc_trim(0))


def freeze_startup_objects() -> int:
    """Collect start-up's garbage, hand the heap it freed back to the kernel, then move
    every object left into the permanent generation, which later collections skip; the
    number frozen. Call once serving is set up: objects made later (a new model version)
    are collected as usual."""
    gc.collect()
    trim_heap()
    gc.freeze()
    return gc.get_freeze_count()
