"""Temporary Prefect API servers left running by ``colorize`` processes that were killed outright.

Without a Prefect API configured, each ``colorize run`` or ``train`` starts a temporary server (a
``uvicorn`` child process) and stops it on the way out, SIGTERM included (see ``colorize.cli``).
A process killed with SIGKILL (the kernel's out-of-memory killer, ``kill -9``) runs no exit code,
so its server lives on, holding a port and a few hundred MB, serving no one: a temporary server
serves only the process that started it. The next command stops such servers.

Linux only (it reads ``/proc``); elsewhere nothing is found. A server counts as orphaned when its
parent is no longer the Python that started it: the server runs on its starter's own interpreter,
and an orphan is adopted by ``init`` or a subreaper (systemd, tini), which run other programs. Only
the user's own processes are looked at.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

_APP = "prefect.server.api.server:create_app"
_EPHEMERAL = b"PREFECT__SERVER_EPHEMERAL=1"
PROC = Path("/proc")


def _argv(pid: int) -> list[str]:
    return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")


def _parent(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    stat = (PROC / str(pid) / "stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def _exe(pid: int) -> str:
    return os.readlink(PROC / str(pid) / "exe")


def _exe_or_none(pid: int) -> str | None:
    """A process's executable; None when it is not ours to read (then it is not our starter)."""
    try:
        return _exe(pid)
    except OSError:
        return None


def orphaned_prefect_servers() -> list[int]:
    """PIDs of this user's temporary Prefect servers whose starting process is gone."""
    if not PROC.is_dir():
        return []
    found = []
    uid = os.getuid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if entry.stat().st_uid != uid:
                continue
            argv = _argv(pid)
            if "uvicorn" not in argv or _APP not in argv:
                continue
            if _EPHEMERAL not in (entry / "environ").read_bytes().split(b"\0"):
                continue  # a server someone runs on purpose (`prefect server start`)
            parent = _parent(pid)
            if parent <= 1 or _exe_or_none(parent) != _exe(pid):
                found.append(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found


def stop_orphaned_prefect_servers() -> list[int]:
    """Send SIGTERM to every orphaned temporary Prefect server; the PIDs signalled."""
    stopped = []
    for pid in orphaned_prefect_servers():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
        stopped.append(pid)
    if stopped:
        log.warning(
            "stopped %d temporary Prefect server(s) left running by killed colorize commands (pids %s)",
            len(stopped), ", ".join(map(str, stopped)),
        )  # fmt: skip
    return stopped
