"""resources: how much memory this process may use, for the choices between holding data and streaming it.

The limit is the smallest of the machine's RAM, the memory limit of the process's cgroup (a SLURM job's
``--mem``, a container's limit; cgroup v2 or v1) and its address-space limit (``ulimit -v``, ``prlimit
--as``), so a job planned on a cluster node sees the memory it was given rather than the node's.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

# Hold a dataset in memory (fastest) when it takes at most this share of the usable memory; beyond it,
# convert keeps what it reads on disk and training streams from the store.
MEMORY_SHARE = 0.25

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_memory_bytes() -> int:
    """The memory this process may use: RAM, cgroup limit and address-space limit, whichever is least."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    cgroup = cgroup_memory_limit(Path("/proc/self/cgroup").read_text() if Path("/proc/self/cgroup").exists() else "")
    if cgroup:
        limits.append(cgroup)
    address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if address_space != resource.RLIM_INFINITY:
        limits.append(address_space)
    return int(min(limits))


def cgroup_memory_limit(proc_cgroup: str, root: Path = CGROUP_ROOT) -> int | None:
    """The memory limit in bytes of the cgroup described by `proc_cgroup` (the text of
    /proc/self/cgroup), from cgroup v2's memory.max or v1's memory.limit_in_bytes; None when unlimited
    or unreadable."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            candidate = root / path.lstrip("/") / "memory.max"
        elif "memory" in controllers.split(","):
            candidate = root / "memory" / path.lstrip("/") / "memory.limit_in_bytes"
        else:
            continue
        try:
            value = candidate.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:  # v1 writes a huge number for "no limit", v2 "max"
            return int(value)
    return None
