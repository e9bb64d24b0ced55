"""Host memory for inference on the CPU: freed tensor memory is kept for reuse instead of returned to the system.

glibc's malloc serves each allocation above its mmap threshold with freshly mapped pages and unmaps them again on
free, so every large activation of a DiT forward (a (768, 2048) float32 MLP hidden state is 6 MiB) page-faults all
of its memory in anew, every block of every step: about a tenth of a CPU step of the 71 M-parameter FLUX (1.83 s
against 1.68 s a 4-step request, measured alternately). Raising the mmap threshold to glibc's maximum (32 MiB) and
the trim threshold to 256 MiB lets the heap hand freed blocks out again, as the allocators PyTorch's CPU tuning
guides preload (jemalloc, tcmalloc) do. The cost: up to 256 MiB of freed memory stays with the process.
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_host_memory() -> bool:
    """Tunes glibc's malloc as the module says; False where the C library has no mallopt (nothing changes)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
