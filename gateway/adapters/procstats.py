"""What the kernel says about this process: resident memory, CPU time and bytes written to storage (``/proc``).

Each read is one small file (~10 us). ``None`` where ``/proc`` is missing or hides the value (``/proc/self/io``
needs the process's own ptrace access, which some sandboxes deny): the caller leaves that figure out.
"""

import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes():
    """Resident set size, from ``/proc/self/statm`` (its second field, in pages)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def write_bytes():
    """Bytes this process caused to be written to storage since it started (``write_bytes`` of
    ``/proc/self/io``: what reaches the block device, the SD card's wear, not what was merely ``write()`` n)."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds():
    """User plus system CPU time of this process, in seconds."""
    t = os.times()
    return t.user + t.system
