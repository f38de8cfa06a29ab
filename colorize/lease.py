"""One run at a time per destination: a lease at ``DEST/manifests/lease.json`` (and one training
at a time per checkpoint folder, by the same means).

Two runs writing one destination at once would colorize the same scans twice, and each would fold
the other's unfinished manifest as if its run had been killed. So a run takes the destination's
lease before it touches anything there, renews it while it works, and gives it back when its
manifest is written. A second run finds the lease held and stops, naming the holder.

The lease names its holder (run, host, process) and when it last renewed. A holder is taken for
dead, and its lease taken over, when its process is gone from this host (a killed run: the next
one goes on at once), or when it has not renewed for ``LEASE_SECONDS`` (a run on another host, or
a frozen one; hosts' clocks must agree to well within that). Taking, renewing and giving back are
conditional writes (:meth:`colorize.storage.Storage.write_if`), so of two runs starting together
exactly one wins, and a holder that lost its lease finds out at its next renewal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from types import TracebackType

from colorize.host import HOST, PID_SPACE, process_alive, sees_processes_of, this_process
from colorize.storage import Storage, StorageError

log = logging.getLogger(__name__)

LEASE_KEY = "manifests/lease.json"
# A holder that has not renewed for this long is taken for dead: long enough for a storage outage
# that botocore's retries ride out, short enough that a killed run on another host costs little.
LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0


class DestinationBusyError(StorageError):
    """Another live run holds the destination's lease, or this run lost it."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease. Times are seconds since the epoch, by the holder's clock."""

    run_id: str
    host: str
    pid: int
    started: float
    renewed: float
    # When the process started (None in leases written before it was recorded): a later process
    # given the same id, as after a container restart, is not the holder.
    pid_started: float | None = None
    # Whose process ids (colorize.host.PID_SPACE; None in leases written before it was recorded).
    pid_space: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """The holder recorded in a lease; None when it cannot be read as one."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None

    def is_gone(self, now: float, lease_seconds: float) -> bool:
        """Whether the holder is dead: its process gone from this host, or silent too long."""
        if sees_processes_of(self.host, self.pid_space) and not process_alive(self.pid, self.pid_started):
            return True
        return now - self.renewed > lease_seconds

    def describe(self, now: float) -> str:
        started = datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds")
        return (
            f"run {self.run_id} (process {self.pid} on {self.host}, started {started}, "
            f"last renewed {max(0.0, now - self.renewed):.0f} s ago)"
        )


class DestinationLease:
    """Hold ``dest``'s lease (``key``) for run ``run_id`` while the ``with`` block runs; ``why`` says,
    in a refusal, what two holders at once would do.

    Entering takes the lease (a dead holder's is taken over, with a warning) or raises
    :class:`DestinationBusyError`; a thread renews it every ``renew_seconds``; leaving gives it back.
    :meth:`check` raises if another run took it over meanwhile.
    """

    def __init__(
        self,
        dest: Storage,
        run_id: str,
        lease_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        key: str = LEASE_KEY,
        why: str = "two runs on one destination would colorize the same scans twice",
    ):
        self.dest, self.run_id, self.key, self.why = dest, run_id, key, why
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        now = time.time()
        pid, pid_started = this_process()
        self._holder = Holder(run_id, HOST, pid, now, now, pid_started, PID_SPACE)
        self._version: str | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._renewer: threading.Thread | None = None
        self.unguarded = False  # the store ignores conditional writes: the lease guards nothing

    def __enter__(self) -> DestinationLease:
        self._take()
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="lease-renewer", daemon=True)
        self._renewer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._lost.is_set() or self._version is None:
            return
        try:
            self.dest.delete_if(self.key, self._version)
        except (StorageError, OSError):  # it lapses by itself; the run's own outcome matters more
            log.warning("run %s could not give back the lease at %s", self.run_id, self.dest.uri, exc_info=True)

    def check(self) -> None:
        """Raise :class:`DestinationBusyError` when another run has taken the lease over."""
        if self._lost.is_set():
            raise DestinationBusyError(
                f"run {self.run_id} lost the lease of {self.dest.uri} to another run, which took it for dead "
                f"(not renewed for {self.lease_seconds:.0f} s, or, from this host, its process not found); "
                "its records are left for the next run to fold in"
            )

    def _take(self) -> None:
        for _ in range(5):  # each pass fails only when another run changed the lease meanwhile
            now = time.time()
            mine = replace(self._holder, renewed=now).to_bytes()
            if (version := self.dest.write_if(self.key, mine, None)) is not None:
                self._version = version
                self._probe(mine)
                return
            current = self.dest.read_versioned(self.key)
            if current is None:
                continue  # given back in between
            data, version = current
            holder = Holder.from_bytes(data)
            if holder is not None and not holder.is_gone(now, self.lease_seconds):
                raise DestinationBusyError(
                    f"{self.dest.uri} is in use by {holder.describe(now)}: {self.why}. Run again when it has "
                    f"finished (a killed run's lease is taken over at once where its process can be seen gone, "
                    f"on its own host and in its own container since its boot; elsewhere after "
                    f"{self.lease_seconds:.0f} s without renewal)"
                )
            if (new := self.dest.write_if(self.key, mine, version)) is not None:
                what = holder.describe(now) if holder else "an unreadable holder"
                log.warning("run %s took over the lease of %s from %s, which is gone", self.run_id, self.dest.uri, what)
                self._version = new
                return
        raise DestinationBusyError(f"could not take the lease of {self.dest.uri}: other runs kept changing it")

    def _probe(self, mine: bytes) -> None:
        """Say so when the store ignores conditional writes (it wrote over the lease just taken).

        S3-compatible stores that do not implement ``If-None-Match`` / ``If-Match`` accept every
        PUT: on them a lease keeps no second run off. One more create-only write of the same bytes
        tells: refused on a store that honours it, accepted (same bytes, same ETag) on one that does not.
        """
        if (again := self.dest.write_if(self.key, mine, None)) is None:
            return
        self._version = again
        self.unguarded = True
        log.warning(
            "the store of %s ignored a conditional write (If-None-Match): its lease cannot keep a second run "
            "off this destination, and two runs at once would colorize the same scans twice. Run one at a time "
            "by other means (the deployment's concurrency limit), or use a store that honours conditional "
            "requests (AWS S3, MinIO, Ceph)",
            self.dest.uri,
        )

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            renewed = replace(self._holder, renewed=time.time()).to_bytes()
            try:
                version = self.dest.write_if(self.key, renewed, self._version)
            except (StorageError, OSError):  # the next tick tries again; the lease lasts lease_seconds
                log.warning("run %s could not renew its lease at %s", self.run_id, self.dest.uri, exc_info=True)
                continue
            if version is None:
                self._lost.set()
                log.error("run %s lost the lease of %s to another run", self.run_id, self.dest.uri)
                return
            self._version = version
