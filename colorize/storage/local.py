"""Local-folder storage: atomic writes by temp file + fsync + rename, staged in ``ROOT/.colorize-tmp``."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from colorize.host import HOST, PID_SPACE, process_alive, sees_processes_of, this_process
from colorize.storage import NoSuchFolderError, ObjectInfo, StorageError, UnsafeKeyError, check_key

# Temporary files start with this, so that a listing (and a rerun after a kill) never takes one
# for a scan or an output.
TEMP_PREFIX = ".colorize-tmp-"
# Writes are staged here, under the root, and renamed into place: a process killed mid-write
# leaves its temp file in this one folder, where the next run finds and removes it, instead of
# anywhere among millions of outputs.
TEMP_DIR = ".colorize-tmp"
# A temp file not claimed by a live process of this host is left this long before removal (a
# writer on another host sharing the folder, over NFS say, cannot be asked whether it lives).
_FOREIGN_TEMP_SECONDS = 24 * 3600
# Write faults of the destination itself, not of one file: full, over quota, read-only, failing.
_FAULTS_OF_THE_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class LocalStorage:
    """A folder on a local or mounted filesystem."""

    def __init__(self, uri: str):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        self.root = Path(path).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def require_folder(self) -> None:
        """Raise NoSuchFolderError when the root does not exist, StorageError when it is no folder."""
        if not self.root.exists():
            raise NoSuchFolderError(f"folder {self.root} does not exist")
        if not self.root.is_dir():
            raise StorageError(f"{self.root} is not a folder")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        top = self.root / prefix if prefix else self.root
        if not top.is_dir():
            if prefix:
                return
            self.require_folder()
        # os.walk is lazy; names are sorted so that runs (and shards) are reproducible. What it
        # cannot enter or read is listed with the reason, so that a run records it, not skips it.
        unreadable: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable.append):
            yield from (self._problem(err.filename or dirpath, "/", f"cannot list this folder: {err.strerror}")
                        for err in unreadable)  # fmt: skip
            unreadable.clear()
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                target = os.readlink(os.path.join(dirpath, name))
                yield self._problem(
                    os.path.join(dirpath, name), "/", f"a link to the folder {target}, and runs follow no folder links "
                    "(one may loop, or lead into the destination): give that folder as a source of its own",
                )  # fmt: skip
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    if os.path.islink(full):
                        yield self._problem(full, "", f"a link to {os.readlink(full)}, which does not exist")
                    continue  # else vanished between listing and stat
                except OSError as err:
                    yield self._problem(full, "", f"cannot read its details: {err.strerror}")
                    continue
                if not stat.S_ISREG(st.st_mode):  # reading a pipe named scan.jpg would wait for ever
                    yield self._problem(full, "", "not a regular file (a pipe, socket or device): nothing read")
                    continue
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                yield ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)
        yield from (self._problem(err.filename or str(top), "/", f"cannot list this folder: {err.strerror}")
                    for err in unreadable)  # fmt: skip

    def _problem(self, path: str, suffix: str, why: str) -> ObjectInfo:
        key = os.path.relpath(path, self.root).replace(os.sep, "/")
        return ObjectInfo(key=key + suffix, size=0, mtime=0.0, problem=why)

    def root_is_file(self) -> bool:
        """Whether the path names a file, not a folder of them."""
        return self.root.is_file()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._put(self._path(key), data)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, _version(data)

    def write_if(
        self, key: str, data: bytes, version: str | None, content_type: str = "application/octet-stream"
    ) -> str | None:
        with self._locked(key) as path:
            if self._version_of(key) != version:
                return None
            self._put(path, data)
            return _version(data)

    def delete_if(self, key: str, version: str) -> bool:
        with self._locked(key) as path:
            if self._version_of(key) != version:
                return False
            path.unlink()
            return True

    def _version_of(self, key: str) -> str | None:
        current = self.read_versioned(key)
        return current[1] if current else None

    @contextmanager
    def _locked(self, key: str) -> Iterator[Path]:
        """``key``'s path, under an exclusive lock that every conditional operation on it takes.

        flock is released by the kernel when its holder dies, so a killed run never leaves it held;
        on NFS (v4) Linux takes it as a lock of the whole file, which the server arbitrates across hosts.
        """
        path = self._path(key)
        staging = self.root / TEMP_DIR
        staging.mkdir(parents=True, exist_ok=True)
        with open(staging / (key.replace("/", "%") + ".lock"), "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path  # closing the file releases the lock

    def _put(self, path: Path, data: bytes) -> None:
        self._check_inside(path.parent)  # before a folder is made through a link: realpath needs none made
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = self.root / TEMP_DIR
            staging.mkdir(exist_ok=True)
            try:
                _write_atomically(path, data, staging)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                _write_atomically(path, data, path.parent)  # another filesystem mounted inside the root
        except OSError as err:
            if err.errno in _FAULTS_OF_THE_DISK:  # every write after this one would fail alike
                raise StorageError(f"cannot write to {self.root}: {err.strerror}") from None
            raise

    def _check_inside(self, folder: Path) -> None:
        """Refuse a folder that a link inside the root takes elsewhere: into the scans' own folder, say,
        where the output would replace its scan. The folder need not exist yet: ``realpath`` follows
        the links of the part that does."""
        real = Path(os.path.realpath(folder))
        if not real.is_relative_to(self.root):
            raise UnsafeKeyError(
                f"not written: {folder} leads out of {self.root}, to {real} (a link to a folder); "
                "outputs are written only inside the destination"
            )

    def sweep_temp(self) -> int:
        """Remove temp files that killed writers left; return how many.

        A file is stale when the process that named itself in it is gone (seen so from its own host
        and container, since their boot), or, from anywhere else, when it is older than a day. Live
        writers' files are left alone, so another run writing to the same folder is safe.
        """
        removed = 0
        staging = self.root / TEMP_DIR
        for entry in staging.iterdir() if staging.is_dir() else ():
            if entry.name.startswith(TEMP_PREFIX) and _is_stale(entry):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Folders exist only to hold objects (as prefixes do in S3): drop the ones this emptied.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def uri_for(self, key: str) -> str:
        # A folder's key ends in "/" (a listing's problem row): its URI does too, as in S3.
        return str(self.root / key) + ("/" if key.endswith("/") else "")


def _version(data: bytes) -> str:
    """A local object's version tag: its content's hash (a file has no ETag)."""
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes, staging: Path) -> None:
    """Write to a temp file in ``staging`` (same filesystem as ``path``), then rename it into place."""
    pid, started = this_process()
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{pid}.{started:.2f}+{PID_SPACE}@{HOST}-", dir=staging)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_stale(entry: Path) -> bool:
    """Whether a temp file's writer is gone (see :meth:`LocalStorage.sweep_temp`)."""
    writer, _, rest = entry.name[len(TEMP_PREFIX) :].partition("@")
    host = rest.rpartition("-")[0]
    # "PID.START+SPACE"; "PID.START" or "PID" in files named before the space or the start was.
    writer, plus, space = writer.partition("+")
    pid_text, _, started_text = writer.partition(".")
    if sees_processes_of(host, space if plus else None) and pid_text.isdigit():
        try:
            started = float(started_text) if started_text else None
        except ValueError:
            started = None
        return not process_alive(int(pid_text), started)
    try:
        return time.time() - entry.stat().st_mtime > _FOREIGN_TEMP_SECONDS
    except FileNotFoundError:
        return False
