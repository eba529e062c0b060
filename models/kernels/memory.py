"""Peak resident memory of a block of code, for checking the kernel engine's memory budget.

tracemalloc does not see torch's allocations, and torch has no CPU peak
counter, so a thread samples the process RSS (/proc/self/statm) every
``interval`` seconds and keeps the maximum; ``peak_delta`` is that maximum
minus the RSS on entry. glibc keeps freed small blocks in its heap, which
would hide reuse; run under MALLOC_MMAP_THRESHOLD_=65536 (set before the
process starts, see ``child_env``) so tensor buffers are mmapped and returned
on free, making the delta of one block independent of earlier ones.
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


def child_env(env: dict | None = None) -> dict:
    """A copy of ``env`` (default os.environ) with glibc set to mmap every block >= 64 KiB."""
    out = dict(os.environ if env is None else env)
    out["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return out


def mmap_large_blocks(threshold: int = 65536) -> bool:
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
    """with PeakRSS() as m: ...; m.peak_delta -> max RSS during the block minus RSS at entry (bytes)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def peak_delta(self) -> int:
        return self.peak - self.start


#: the share of the memory available on the device that a kernel function takes as its budget by default
BUDGET_SHARE = 0.4
MIN_BUDGET = 256 * 2**20


def available_bytes(device=None) -> int:
    """Memory free for new allocations: CUDA's ``mem_get_info`` free bytes on a GPU, else the CPU's
    (ntkcheck.resources.available_memory: /proc/meminfo's MemAvailable)."""
    import torch

    from ntkcheck.resources import available_memory

    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    return available_memory()


def default_budget(device=None) -> int:
    """BUDGET_SHARE (40%) of ``available_bytes(device)`` at the time of the call, at least 256 MiB."""
    return max(MIN_BUDGET, int(BUDGET_SHARE * available_bytes(device)))
