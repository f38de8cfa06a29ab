"""One run at a time per destination: conditional writes and the lease built on them, in a local
folder and in a real S3-compatible server (moto, over HTTP)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from threading import Barrier

import boto3
import pytest

from colorize.host import HOST, PID_SPACE, this_process
from colorize.lease import LEASE_KEY, DestinationBusyError, DestinationLease, Holder
from colorize.storage import Storage, open_storage
from colorize.storage.s3 import S3Storage


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "dest"))
    url = request.getfixturevalue("moto_url")
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    bucket = f"lease-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
    return S3Storage(f"s3://{bucket}/colour", endpoint_url=url)


def _lease_holder(store: Storage) -> Holder | None:
    current = store.read_versioned(LEASE_KEY)
    return None if current is None else Holder.from_bytes(current[0])


def test_conditional_writes_let_exactly_one_writer_win(store):
    assert store.read_versioned("lock.json") is None
    first = store.write_if("lock.json", b"one", None)
    assert first is not None
    assert store.write_if("lock.json", b"two", None) is None  # it exists now
    second = store.write_if("lock.json", b"three", first)
    assert second is not None and second != first
    assert store.write_if("lock.json", b"four", first) is None  # a stale version is refused
    assert store.read_versioned("lock.json") == (b"three", second)
    assert not store.delete_if("lock.json", first)
    assert store.delete_if("lock.json", second)
    assert store.read_versioned("lock.json") is None and not store.delete_if("lock.json", second)

    # Eight writers at once, each creating the object: one wins, and the object is its.
    start = Barrier(8)

    def create(i: int) -> str | None:
        start.wait()
        return store.write_if("race.json", f"writer {i}".encode(), None)

    with ThreadPoolExecutor(8) as pool:
        won = [i for i, version in enumerate(pool.map(create, range(8))) if version is not None]
    assert len(won) == 1
    assert store.read_versioned("race.json")[0] == f"writer {won[0]}".encode()  # type: ignore[index]


def test_a_destination_takes_one_run_at_a_time(store):
    with DestinationLease(store, "run-a") as lease:
        assert not lease.unguarded  # a folder's lock file, and S3's conditional requests, hold
        holder = _lease_holder(store)
        assert holder is not None and holder.run_id == "run-a" and holder.host == HOST
        with pytest.raises(DestinationBusyError) as busy, DestinationLease(store, "run-b"):
            pass
        message = str(busy.value)
        assert "in use by run run-a" in message and HOST in message and store.uri in message
        assert _lease_holder(store) == holder  # the refused run changed nothing
    assert store.read_versioned(LEASE_KEY) is None  # given back
    with DestinationLease(store, "run-b"):
        assert _lease_holder(store).run_id == "run-b"  # type: ignore[union-attr]


def test_a_dead_or_silent_holders_lease_is_taken_over(store, caplog):
    caplog.set_level(logging.WARNING, logger="colorize.lease")
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    killed_here = Holder("killed", HOST, int(exited.stdout), now - 5, now - 5)
    alive_elsewhere = Holder("elsewhere", "another-host", 1, now - 100, now - 30)
    silent_elsewhere = Holder("silent", "another-host", 1, now - 3600, now - 700)

    store.write_bytes(LEASE_KEY, killed_here.to_bytes())
    with DestinationLease(store, "next"):  # at once: its process is gone from this host
        assert _lease_holder(store).run_id == "next"  # type: ignore[union-attr]
    assert "took over the lease" in caplog.text and "run killed" in caplog.text

    store.write_bytes(LEASE_KEY, alive_elsewhere.to_bytes())
    with pytest.raises(DestinationBusyError, match="run elsewhere .* on another-host"), DestinationLease(store, "x"):
        pass
    store.write_bytes(LEASE_KEY, silent_elsewhere.to_bytes())
    with DestinationLease(store, "after-silence", lease_seconds=600):
        assert _lease_holder(store).run_id == "after-silence"  # type: ignore[union-attr]
    store.write_bytes(LEASE_KEY, b"not a lease")
    with DestinationLease(store, "after-junk"):
        assert _lease_holder(store).run_id == "after-junk"  # type: ignore[union-attr]


def test_a_killed_holders_lease_is_taken_over_at_once_when_its_process_id_went_to_another(store):
    # A container restarted after a crash numbers its processes afresh: the next run often gets the
    # killed run's very id. Here that later process is this one; the holder started an hour earlier.
    pid, started = this_process()
    now = time.time()
    killed_with_my_id = Holder("killed", HOST, pid, now - 3600, now - 5, pid_started=started - 3600)
    store.write_bytes(LEASE_KEY, killed_with_my_id.to_bytes())
    with DestinationLease(store, "restarted"):
        assert _lease_holder(store).run_id == "restarted"  # type: ignore[union-attr]
        assert _lease_holder(store).pid_started == started  # type: ignore[union-attr]
    # A run in another container that shares this host's name (host networking) numbers its
    # processes apart: that its id names no process here says nothing, and it is left its lease.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    next_door = PID_SPACE[:8] + "0" * 8  # this boot, another PID namespace
    other_space = Holder("next-door", HOST, int(gone.stdout), now - 60, now - 5, now - 60, pid_space=next_door)
    store.write_bytes(LEASE_KEY, other_space.to_bytes())
    with pytest.raises(DestinationBusyError, match="in use by run next-door"), DestinationLease(store, "x"):
        pass
    # Nor is one of another boot: this host before a reboot, or another machine of the same name.
    other_boot = replace(other_space, run_id="same-name", pid_space="0" * 8 + PID_SPACE[8:])
    store.write_bytes(LEASE_KEY, other_boot.to_bytes())
    with pytest.raises(DestinationBusyError, match="in use by run same-name"), DestinationLease(store, "x"):
        pass
    # A lease from before start times were recorded names the process by its id alone.
    no_start = json.loads(killed_with_my_id.to_bytes())
    del no_start["pid_started"]
    store.write_bytes(LEASE_KEY, json.dumps(no_start).encode())
    with pytest.raises(DestinationBusyError, match="in use by run killed"), DestinationLease(store, "x"):
        pass


def test_the_lease_is_renewed_and_a_holder_that_lost_it_finds_out(store):
    with DestinationLease(store, "slow", renew_seconds=0.05) as lease:
        taken = _lease_holder(store)
        time.sleep(0.5)
        renewed = _lease_holder(store)
        assert renewed is not None and taken is not None and renewed.renewed > taken.renewed
        lease.check()  # still held
        # Another run takes it over (as it would after lease_seconds of silence).
        intruder = Holder("intruder", "another-host", 1, time.time(), time.time())
        store.write_bytes(LEASE_KEY, intruder.to_bytes())
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                lease.check()
            except DestinationBusyError as lost:
                assert "run slow lost the lease" in str(lost)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the holder never found out it had lost its lease")
    assert _lease_holder(store) == intruder  # leaving did not remove the new holder's lease
    assert json.loads(store.read_bytes(LEASE_KEY))["run_id"] == "intruder"
