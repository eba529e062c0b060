"""Memory is checked before it is spent: the machine's available memory and a one-line refusal."""
from __future__ import annotations

import os

from ntkcheck.errors import UserError


def available_memory() -> int:
    """Bytes the OS can give this process now (MemAvailable of /proc/meminfo; physical free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to ask: do not refuse
        return 1 << 62


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def require_memory(needed: int, what: str, available: int | None = None) -> None:
    """Raise a UserError naming ``what``, the bytes needed and the bytes available when needed > available."""
    have = available_memory() if available is None else available
    if needed > have:
        raise UserError(f"{what} needs about {human_bytes(needed)} of memory ({needed} bytes) but "
                        f"{human_bytes(have)} ({have} bytes) are available; use smaller widths")
