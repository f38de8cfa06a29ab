"""Local storage: atomic whole-object writes, safe keys, lazy sorted listing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from colorize.host import HOST, PID_SPACE, this_process
from colorize.storage import StorageError, UnsafeKeyError, check_key, open_storage
from colorize.storage.local import TEMP_DIR, TEMP_PREFIX


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../../b", "a\\b", "a//b", "./a", "a/./b", "a/", "..", "a\x00b"])
def test_keys_that_could_escape_are_refused(key):
    with pytest.raises(UnsafeKeyError):
        check_key(key)


@pytest.mark.parametrize("uri", ["S3://colour/typo", "s3:/colour/typo", "gs://bucket/x", "https://host/x"])
def test_a_mistyped_or_foreign_uri_is_refused_not_made_a_local_folder(tmp_path, monkeypatch, uri):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match="this tool does not read: give s3://bucket/prefix"):
        open_storage(uri)
    assert not os.listdir(tmp_path)


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    store = open_storage(str(tmp_path))
    store.write_bytes("a/b/c.jpg", b"one")
    store.write_bytes("a/b/c.jpg", b"two")
    assert (tmp_path / "a/b/c.jpg").read_bytes() == b"two"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert [o.key for o in store.list()] == ["a/b/c.jpg"]  # the staging folder is not listed
    with pytest.raises(UnsafeKeyError):
        store.write_bytes("../outside.jpg", b"x")
    assert not (tmp_path.parent / "outside.jpg").exists()


def test_a_folder_link_inside_the_root_is_not_written_through(tmp_path):
    scans, dest = tmp_path / "scans", tmp_path / "dest"
    (scans / "box0").mkdir(parents=True)
    (scans / "box0" / "a.jpg").write_bytes(b"the master")
    dest.mkdir()
    (dest / "box0").symlink_to(scans / "box0")  # e.g. made to "see the scans beside their outputs"
    store = open_storage(str(dest))
    with pytest.raises(UnsafeKeyError, match=f"{dest / 'box0'} leads out of {dest}, to {scans / 'box0'}"):
        store.write_bytes("box0/a.jpg", b"an output")
    with pytest.raises(UnsafeKeyError, match="leads out of"):
        store.write_bytes("box0/1950/reel3/b.jpg", b"an output")  # refused before a folder is made there
    assert (scans / "box0" / "a.jpg").read_bytes() == b"the master"
    assert [p.name for p in (scans / "box0").iterdir()] == ["a.jpg"]
    store.write_bytes("box1/a.jpg", b"an output")  # real folders are written as ever
    assert (dest / "box1" / "a.jpg").read_bytes() == b"an output"


def test_a_failed_write_keeps_the_old_object(tmp_path, monkeypatch):
    store = open_storage(str(tmp_path))
    store.write_bytes("x.bin", b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    # A full disk is the destination's fault, not the file's: it stops the run (StorageError).
    with pytest.raises(StorageError, match=f"cannot write to {tmp_path}: No space left on device"):
        store.write_bytes("x.bin", b"new, never complete")
    assert (tmp_path / "x.bin").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == [TEMP_DIR, "x.bin"] and not os.listdir(tmp_path / TEMP_DIR)


def test_listing_is_recursive_sorted_and_skips_hidden_and_temporary_files(tmp_path):
    for name in ["b/2.png", "a.jpg", "b/1.png", ".hidden.jpg", f"b/{TEMP_PREFIX}123", ".git/x.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    keys = [o.key for o in open_storage(str(tmp_path)).list()]
    assert keys == ["a.jpg", "b/1.png", "b/2.png"]
    assert open_storage(f"file://{tmp_path}").uri == str(tmp_path)


def test_delete_removes_folders_it_empties(tmp_path):
    store = open_storage(str(tmp_path))
    store.write_bytes("m/run/part.csv", b"x")
    store.delete("m/run/part.csv")
    store.delete("m/run/part.csv")  # already gone: no error
    assert not (tmp_path / "m").exists() and tmp_path.exists()


def test_sweep_removes_only_what_dead_writers_left(tmp_path):
    store = open_storage(str(tmp_path))
    store.write_bytes("x.jpg", b"x")  # makes the staging folder
    staging = tmp_path / TEMP_DIR
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = staging / f"{TEMP_PREFIX}{gone.stdout.strip()}@{HOST}-abc123"  # killed mid-write
    alive = staging / f"{TEMP_PREFIX}{os.getpid()}@{HOST}-def456"  # a run writing now (named by id alone)
    pid, started = this_process()
    alive_started = staging / f"{TEMP_PREFIX}{pid}.{started:.2f}@{HOST}-mno345"  # ... by id and start
    reused = staging / f"{TEMP_PREFIX}{pid}.{started - 3600:.2f}@{HOST}-pqr678"  # a killed run with my id
    # A container's beside this one, sharing its host name: the id, gone here, may live there.
    next_door = staging / f"{TEMP_PREFIX}{gone.stdout.strip()}.{started:.2f}+{PID_SPACE[:8]}{'0' * 8}@{HOST}-stu901"
    # Another boot: this host before a reboot, or another machine of its name writing now.
    same_name = staging / f"{TEMP_PREFIX}{gone.stdout.strip()}.{started:.2f}+{'0' * 8}{PID_SPACE[8:]}@{HOST}-yza567"
    mine_now = staging / f"{TEMP_PREFIX}{gone.stdout.strip()}.{started:.2f}+{PID_SPACE}@{HOST}-vwx234"  # dead
    foreign = staging / f"{TEMP_PREFIX}42@other-host-ghi789"  # another machine's, recent
    old_foreign = staging / f"{TEMP_PREFIX}42@other-host-jkl012"
    for path in (dead, alive, alive_started, reused, foreign, old_foreign, next_door, mine_now, same_name):
        path.write_bytes(b"partial")
    day_ago = time.time() - 25 * 3600
    os.utime(old_foreign, (day_ago, day_ago))
    assert store.sweep_temp() == 4
    kept = [alive.name, alive_started.name, foreign.name, next_door.name, same_name.name]
    assert sorted(p.name for p in staging.iterdir()) == sorted(kept)
    assert (tmp_path / "x.jpg").read_bytes() == b"x"


def test_a_folder_the_listing_cannot_enter_is_listed_with_the_reason(tmp_path):
    store = open_storage(str(tmp_path))
    store.write_bytes("open/a.jpg", b"x")
    store.write_bytes("locked/b.jpg", b"x")
    (tmp_path / "locked").chmod(0)
    lister = [sys.executable, "-c", f"from colorize.storage import open_storage; "
              f"[print(repr((o.key, o.problem))) for o in open_storage({str(tmp_path)!r}).list()]"]  # fmt: skip
    if os.geteuid() == 0:  # root reads any folder: list without the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root's capability to read any folder")
        caps = "-dac_override,-dac_read_search"
        lister = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *lister]
    try:
        listed = subprocess.run(lister, capture_output=True, text=True, check=True).stdout.splitlines()
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert listed == [repr(("locked/", "cannot list this folder: Permission denied")), repr(("open/a.jpg", ""))]
    assert store.uri_for("locked/") == f"{tmp_path / 'locked'}/"  # a folder's row says it is one


def test_a_pipe_among_the_scans_is_listed_as_a_problem_not_read(tmp_path):
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "ok.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "box" / "scan.jpg")  # opening it to read would block
    listed = {o.key: o.problem for o in open_storage(str(tmp_path)).list()}
    assert listed == {"box/ok.jpg": "", "box/scan.jpg": "not a regular file (a pipe, socket or device): nothing read"}
