"""This machine: its name, and whether a process of it still lives.

Runs leave their host and process id on what they hold (temp files, the destination's lease), so
that the next run on the same host can tell at once whether the holder was killed.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
