"""This machine: its name, and whether a process of it still lives.

Runs leave their host, process id and the process's start time on what they hold (temp files, the
destination's lease), so that the next run on the same host can tell at once whether the holder
was killed. The start time matters because process ids are reused: a container restarted after a
crash numbers its processes from 1 again, so the next run often gets the very id of the killed one.
And the process ids' space (boot and PID namespace): containers that share the host's name (host
networking) each number their processes apart, so a run in one sees no process of the other's and
must not take it for dead; nor can it tell a container's processes from before its restart, or
(the boot id differing) from another machine of the same name. Those are left to time (the lease's
10 minutes, a temp file's day).
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from pathlib import Path

import psutil

HOST = socket.gethostname()


def _pid_space() -> str:
    """A short name for the process ids this process sees: 8 hex digits for the kernel's boot, 8 for
    its PID namespace (Linux); "" where they cannot be read."""
    try:
        boot, namespace = Path("/proc/sys/kernel/random/boot_id").read_text().strip(), os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return "".join(hashlib.sha256(text.encode()).hexdigest()[:8] for text in (boot, namespace))


PID_SPACE = _pid_space()


def sees_processes_of(host: str, pid_space: str | None) -> bool:
    """Whether this process can tell if a process of ``host`` in ``pid_space`` (None: recorded before
    spaces were, taken for this one) lives or not.

    Another space is another container sharing the host's name (host networking), this container
    before a restart, this host before a reboot, or another machine of the same name: its ids name
    nothing here, so whether the process lives cannot be told, and time must.
    """
    return host == HOST and pid_space in (None, PID_SPACE)


# How far apart two readings of one process's start time may lie: the kernel counts it in clock
# ticks since boot, and the boot time it is added to is rounded to whole seconds.
START_TOLERANCE_S = 1.0


def process_started(pid: int) -> float | None:
    """When process ``pid`` of this host started, in seconds since the epoch; None when there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


@functools.cache
def _own_start(pid: int) -> float:
    started = process_started(pid)
    assert started is not None  # this very process
    return started


def this_process() -> tuple[int, float]:
    """This process's id and start time (seconds since the epoch), as :func:`process_alive` takes them."""
    pid = os.getpid()  # not cached itself: a forked worker is another process
    return pid, _own_start(pid)


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` of this host exists (another user's counts as alive) and, when
    ``started`` is given, is the one that started then, not a later process given the same id."""
    try:
        now_started = process_started(pid)
    except psutil.AccessDenied:
        return True
    return now_started is not None and (started is None or abs(now_started - started) <= START_TOLERANCE_S)
