"""Keep freed heap memory in the process between training steps (glibc only).

A training step allocates its ``(M, B, K)`` tensors fresh and frees them at
the end. glibc's malloc serves large blocks with new ``mmap`` regions and
returns freed memory at the top of the heap to the OS, so the next step
faults the same pages in again, 4 KiB at a time, and the kernel zeroes each
one. Measured with ``benchmarks/bench_memory.py`` (batch 1000, K = 512, minor
page faults and median step time, 2-core development machine):

    =======================  ==============  =============
    step                     default malloc  retained
    =======================  ==============  =============
    G_relu, 1 model          3,412 / 37 ms   50 / 30 ms
    P-VAE, 8 stacked models  10,794 / 159 ms 196 / 128 ms
    G_relu, 8 stacked        11,693 / 294 ms 391 / 263 ms
    =======================  ==============  =============

Raising them keeps up to the peak of freed memory mapped (a training process
reuses it at once). It is process-wide, so the trainer and the sparse-coding
solvers apply it on the CPU only, once; ``POISSONVAE_RETAIN_MEMORY=0`` turns it
off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks below 256 MiB come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # up to 1 GiB of free memory at the heap top stays mapped

_state: dict[str, bool] = {}


def retain_freed_memory() -> bool:
    """Apply the thresholds above once per process; returns whether they are in effect
    (``False`` off glibc Linux, when ``mallopt`` refuses, or when turned off)."""
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if os.environ.get("POISSONVAE_RETAIN_MEMORY", "1") != "0" and platform.system() == "Linux" \
            and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            applied = False
    _state["applied"] = applied
    return applied
