"""Local-folder storage: atomic writes by temp file + fsync + rename in the same folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from colorize.storage import ObjectInfo, StorageError, check_key

# Temporary files start with this, so that a listing (and a rerun after a kill) never takes one
# for a scan or an output.
TEMP_PREFIX = ".colorize-tmp-"


class LocalStorage:
    """A folder on a local or mounted filesystem."""

    def __init__(self, uri: str):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        self.root = Path(path).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        top = self.root / prefix if prefix else self.root
        if not top.is_dir():
            if prefix:
                return
            raise StorageError(f"folder {self.root} does not exist or is not a folder")
        # os.walk is lazy; names are sorted so that runs (and shards) are reproducible.
        for dirpath, dirnames, filenames in os.walk(top, onerror=None):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue  # vanished between listing and stat
                if not os.path.isfile(full):
                    continue
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                yield ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
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
        return str(self.root / key)
