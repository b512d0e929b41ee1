"""A throwaway control group per program: a memory limit that covers every kind of mapping (anonymous,
shared, tmpfs pages) and a process limit of its own, and a way to kill everything in it.

cgroup v2 (``memory.max``, ``pids.max``, ``cgroup.kill``) where the machine delegates it to us, else the
v1 ``memory`` and ``pids`` hierarchies (as on our CPU machines); where neither is writable, ``open_group``
returns None and the sandbox falls back to RLIMIT_AS (weaker: it counts address space, not memory).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
_names = itertools.count()


@dataclass(frozen=True)
class Hierarchy:
    kind: str  # "v2" | "v1"
    memory: Path  # where groups with a memory limit are made
    pids: Path  # where groups with a process limit are made (the same directory on v2)


@dataclass
class Group:
    """One program's control group(s): ``procs_files`` are written with the program's pid before it
    starts (by the sandbox's pre-exec hook, in the child)."""

    hierarchy: Hierarchy
    dirs: tuple[Path, ...]

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(d / "cgroup.procs") for d in self.dirs)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        return found

    def kill_all(self, seconds: float = 10.0) -> None:
        """SIGKILL every process in the group until none is left, then remove the group."""
        kill_file = self.dirs[0] / "cgroup.kill"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.hierarchy.kind == "v2" and kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if not self.pids():
                break
            time.sleep(0.01)
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()

    def memory_peak_exceeded(self) -> bool:
        """True when the memory limit was hit (the kernel's OOM killer acted inside the group)."""
        d = self.dirs[0]
        if self.hierarchy.kind == "v2":
            with contextlib.suppress(OSError, ValueError):
                events = dict(line.split() for line in (d / "memory.events").read_text().splitlines())
                return int(events.get("oom_kill", 0)) > 0 or int(events.get("max", 0)) > 0
            return False
        with contextlib.suppress(OSError, ValueError):
            return int((d / "memory.failcnt").read_text()) > 0
        return False


def _writable_dir(path: Path) -> bool:
    probe = path / f"sdsat-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        probe.rmdir()
    return True


@cache
def hierarchy() -> Hierarchy | None:
    """The cgroup hierarchy we may make groups in, or None."""
    controllers = ROOT / "cgroup.controllers"
    if controllers.exists():
        # v2: our own cgroup must delegate memory and pids to children (systemd's Delegate=, or root).
        own = ROOT / Path(Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1].lstrip("/"))
        for base in (own, ROOT):
            enabled = (base / "cgroup.subtree_control").read_text().split() if base.exists() else []
            if {"memory", "pids"} <= set(enabled) and _writable_dir(base):
                return Hierarchy("v2", base, base)
        return None
    memory, pids = ROOT / "memory", ROOT / "pids"
    usable = (memory / "memory.limit_in_bytes").exists() and (pids / "cgroup.procs").exists()
    if usable and _writable_dir(memory) and _writable_dir(pids):
        return Hierarchy("v1", memory, pids)
    return None


def open_group(memory_bytes: int, processes: int) -> Group | None:
    """A new group limited to ``memory_bytes`` of memory and ``processes`` tasks, or None where the
    machine gives us no writable hierarchy."""
    h = hierarchy()
    if h is None:
        return None
    name = f"sdsat-{os.getpid()}-{next(_names)}"
    if h.kind == "v2":
        d = h.memory / name
        d.mkdir()
        (d / "memory.max").write_text(str(memory_bytes))
        with contextlib.suppress(OSError):  # no swap to hide in
            (d / "memory.swap.max").write_text("0")
        (d / "pids.max").write_text(str(processes))
        return Group(h, (d,))
    mem, pids = h.memory / name, h.pids / name
    mem.mkdir()
    pids.mkdir()
    (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
    (pids / "pids.max").write_text(str(processes))
    return Group(h, (mem, pids))


def kill_stale_groups() -> None:
    """Groups that a killed harness left behind: whatever still runs in them is killed, then they go.
    (Inside namespaces nothing survives the harness anyway; this is for the rlimits level.)"""
    h = hierarchy()
    if h is None:
        return
    stale: dict[str, list[Path]] = {}
    for base in {h.memory, h.pids}:
        for d in base.glob("sdsat-*-*"):
            owner = d.name.split("-")[1]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                stale.setdefault(d.name, []).append(d)
    for dirs in stale.values():
        Group(h, tuple(dirs)).kill_all()
