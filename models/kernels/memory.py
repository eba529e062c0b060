"""Peak resident memory of a block of code, for checking the kernel engine's memory budget.

tracemalloc does not see torch's allocations, and torch has no CPU peak
counter, so ``PeakRSS`` reads the kernel's own peak (VmHWM, reset on entry),
or where that is refused samples the process RSS (/proc/self/statm) every
``interval`` seconds; ``peak_delta`` is the peak minus the RSS on entry.
glibc keeps freed blocks below its mmap threshold in its heap, which would
hide reuse; run under MALLOC_MMAP_THRESHOLD_ (set before the process starts,
see ``child_env``) so tensor buffers of at least that size are mmapped and
returned on free, making the delta of one block independent of earlier ones.
Linux only (ValueError elsewhere).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
import time


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError as e:
        raise ValueError(f"cannot read /proc/self/statm ({e}); peak-RSS measurement needs Linux") from None


#: glibc's mmap threshold for kernel runs: blocks of at least 4 MiB (the engine's buffers, a chunk's factors)
#: are mmapped and go back to the OS when freed; smaller ones (a batch's activations) stay in the heap.
#: Measured on 32 SmolLM2-135M examples, one forward and 2 backward passes in batches of 8 (2 cores):
#: 5.36 s under glibc's default, 5.22 s at 4 MiB, 8.28 s at 64 KiB, where every activation costs an mmap
#: and its page faults; the structured capture 3.79 s, 3.90 s and 6.66 s.
MMAP_THRESHOLD = 4 * 2**20


def high_water_bytes() -> int:
    """The process's peak resident set size since start or the last ``_reset_peak`` (VmHWM), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise ValueError("/proc/self/status has no VmHWM line")


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0: 5 written to /proc/self/clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        high_water_bytes()
        return True
    except (OSError, ValueError):
        return False


def child_env(env: dict | None = None, threshold: int = MMAP_THRESHOLD) -> dict:
    """A copy of ``env`` (default os.environ) with glibc set to mmap every block >= ``threshold`` bytes
    (a test's meter of a budget of a few MiB passes 64 KiB, so that every tensor it allocates is seen)."""
    out = dict(os.environ if env is None else env)
    out["MALLOC_MMAP_THRESHOLD_"] = str(int(threshold))
    return out


def mmap_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc mmap every block of at least ``threshold`` bytes from now on (mallopt M_MMAP_THRESHOLD),
    as ``child_env`` does for a child process; True if it took effect.

    Otherwise glibc raises its threshold after large frees (up to 32 MiB) and serves tensors from a heap it
    does not return: a long kernel run's resident memory then exceeds what is live (16 GB RSS for a 12 GB
    budget, measured). Hand-rolled with ctypes: no library sets the C allocator's policy. Linux/glibc only
    (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))   # M_MMAP_THRESHOLD = -3 in malloc.h
    except (OSError, AttributeError):
        return False


class PeakRSS:
    """with PeakRSS() as m: ...; m.peak_delta -> max RSS during the block minus RSS at entry (bytes).

    Linux keeps the peak itself (VmHWM in /proc/self/status, reset to the current RSS by writing 5 to
    /proc/self/clear_refs): exact, and free. Where that reset is refused, a thread samples the RSS every
    ``interval`` seconds instead; that thread costs time (a benchmark's kernel ran 18% slower under a
    0.5 ms sampler, 84.7 s against 71.5 s), so it is the fallback only."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.exact = False

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.exact = _reset_peak()
        self.start = self.peak = rss_bytes()
        if not self.exact:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.peak = max(self.peak, rss_bytes(), high_water_bytes() if self.exact else 0)

    @property
    def peak_delta(self) -> int:
        return self.peak - self.start


#: the share of the memory available on the device that a kernel function takes as its budget by default
BUDGET_SHARE = 0.4
MIN_BUDGET = 256 * 2**20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_free_bytes() -> int:
    """Bytes glibc holds for this process in its heaps but has free (mallinfo2's fordblks, summed over the
    arenas; 0 where glibc < 2.33 or not glibc). Freed tensors below the mmap threshold stay there: the
    process reuses them without asking the OS, but they are not in MemAvailable. Hand-rolled with
    ctypes: no library reads the C allocator's statistics."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return 0
    fn.restype = _Mallinfo2
    return int(fn().fordblks)


def release_free_heap() -> bool:
    """Give the heap's free blocks back to the OS (glibc's malloc_trim(0)); True if any memory was released.
    A benchmark calls it between rows so that each row's peak RSS is its own, not what earlier rows left in
    the heap. Hand-rolled with ctypes, as heap_free_bytes. Linux/glibc only (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def available_bytes(device=None) -> int:
    """Memory free for new allocations: CUDA's ``mem_get_info`` free bytes on a GPU; on the CPU what the OS
    can give (ntkcheck.resources.available_memory: /proc/meminfo's MemAvailable) plus what this process's
    heap holds free (``heap_free_bytes``). Without the second term a kernel made after another in the same
    process got a smaller default budget by what the first left in the heap (SmolLM2-135M, 164 x 32: 5282,
    4754, 4125 MiB for the three kinds one after another), and ran slower for it. The free blocks serve the
    small allocations (a pass's activations) that left them, while a block above the mmap threshold is
    mapped fresh; the default budget's 40% share of the sum leaves room for that difference."""
    import torch

    from ntkcheck.resources import available_memory

    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    return available_memory() + heap_free_bytes()


def default_budget(device=None) -> int:
    """BUDGET_SHARE (40%) of ``available_bytes(device)`` at the time of the call, at least 256 MiB."""
    return max(MIN_BUDGET, int(BUDGET_SHARE * available_bytes(device)))
