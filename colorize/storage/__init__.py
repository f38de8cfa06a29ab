"""Where scans, outputs, manifests and models live: a local folder or an S3 prefix.

One small interface, :class:`Storage`, with two implementations. Keys are always relative,
``/``-separated, and checked by :func:`check_key` before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


class UnsafeKeyError(ValueError):
    """A key that would map outside its storage root."""


class StorageError(RuntimeError):
    """A fault that stops a run: missing bucket or folder, access denied, unreachable endpoint."""


class NoSuchFolderError(StorageError):
    """A local root folder that does not exist: a fault for a source, an empty one for a destination."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object.

    Attributes:
        key: path relative to the storage root, ``/``-separated.
        size: bytes.
        mtime: last modification, seconds since the epoch (S3: LastModified).
        etag: S3 ETag (quotes stripped); None for local files.
        problem: why what the listing found here cannot be read ("" for an object that can): a
            folder it may not enter, a link to nothing, a link to a folder (runs follow none).
            A folder's key ends in ``/``.
    """

    key: str
    size: int
    mtime: float
    etag: str | None = None
    problem: str = ""


class Storage(Protocol):
    """A root (folder or bucket prefix) holding objects addressed by relative keys."""

    uri: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, recursively, lazily (never the whole listing at once)."""
        ...

    def root_is_file(self) -> bool:
        """Whether the URI names one file or object rather than a folder or prefix of them."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The whole object. Raises FileNotFoundError when it does not exist."""
        ...

    def write_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write the whole object atomically: readers see the old object or the new one, never a part."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone."""
        ...

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The whole object and a version tag that changes with every write; None when it does not exist."""
        ...

    def write_if(
        self, key: str, data: bytes, version: str | None, content_type: str = "application/octet-stream"
    ) -> str | None:
        """Write the object only if it is still at ``version`` (None: only if it does not exist).

        Atomic against other writers using these methods (S3: a conditional PUT; a folder: a lock
        file). Returns the new version, or None when the object was not at ``version``.
        """
        ...

    def delete_if(self, key: str, version: str) -> bool:
        """Remove the object only if it is still at ``version``; whether it was removed."""
        ...

    def sweep_temp(self) -> int:
        """Remove what writers killed mid-write left behind; return how many were removed."""
        ...

    def uri_for(self, key: str) -> str:
        """The full URI of a key, as recorded in manifests."""
        ...


def check_key(key: str) -> str:
    """Refuse keys that could escape a storage root; return the key unchanged when it is safe.

    Refused: empty keys, a leading ``/``, backslashes, empty segments (``a//b``), and ``.`` or ``..``
    segments.
    """
    if not key:
        raise UnsafeKeyError("empty key")
    if key.startswith("/"):
        raise UnsafeKeyError(f"key {key!r} is absolute (leading '/')")
    if "\\" in key:
        raise UnsafeKeyError(
            f"the name '{key}' holds a backslash, a folder separator on Windows, so where its output would go "
            "depends on the system reading it: rename it"
        )
    if "\x00" in key:
        raise UnsafeKeyError(f"key {key!r} contains a NUL byte")
    for part in key.split("/"):
        if part == "":
            raise UnsafeKeyError(f"key {key!r} has an empty path segment")
        if part in (".", ".."):
            raise UnsafeKeyError(f"key {key!r} has a {part!r} segment")
    return key


# What XML 1.0 cannot hold, and the output's provenance records the source's name in XMP: the C0
# controls but tab, LF and CR, and lone surrogates, which is how Python spells the bytes of a local
# file name that are not UTF-8 (a Latin-1 name from an old share, say).
_UNRECORDABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def unrecordable(key: str) -> str | None:
    """Why a scan's name cannot be recorded (in its manifest row and its output's provenance), or None."""
    if (found := _UNRECORDABLE.search(key)) is None:
        return None
    code = ord(found.group())
    if 0xDC80 <= code <= 0xDCFF:
        return (
            f"the name is not UTF-8 (it holds the byte 0x{code - 0xDC00:02X}, from another character set): "
            "manifests and the output's provenance record names as text; rename it in UTF-8 "
            "(convmv -f latin1 -t utf-8 renames a folder's)"
        )
    return f"the name holds the control character U+{code:04X}, which the output's provenance cannot record; rename it"


def legible(text: str) -> str:
    """``text`` unchanged, but for the bytes of a local name that is not UTF-8, written as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(text: str) -> str:
    """:func:`legible`, with control characters written as ``\\xNN`` too: for a terminal, where a
    name's escape sequence or carriage return would act instead of showing."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", legible(text))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (U+009B is a terminal's CSI)


def nested_prefix(outer: str, inner: str) -> str:
    """``inner``'s key prefix inside ``outer`` (two storage URIs), when it lies within it; else ""."""
    out, inn = outer.rstrip("/") + "/", inner.rstrip("/") + "/"
    return inn[len(out) :] if inn.startswith(out) and inn != out else ""


def is_hidden(key: str) -> bool:
    """Whether a key has a hidden file or folder in its path: a segment starting with a dot.

    ``.`` and ``..`` segments are not hidden names but unsafe ones (:func:`check_key` refuses them).
    Runs leave hidden names alone in every store, as a local listing never shows them: macOS's
    ``._name.jpg`` resource forks and ``.DS_Store``, ``.thumbnails/`` and the like are not scans.
    """
    return any(part.startswith(".") and part not in (".", "..") for part in key.split("/"))


# A scheme (RFC 3986: a letter, then letters, digits, +, - or .), two letters at least so that a
# drive letter is not one, then ":/".
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/")


def open_storage(uri: str, endpoint_url: str | None = None) -> Storage:
    """The storage for ``uri``: ``s3://bucket/prefix``, ``file:///path`` or a plain path.

    Raises:
        StorageError: a URI of another scheme, or one of these mistyped (``S3://``, ``s3:/``), which
            as a path would have made a local folder of that name and written there.
    """
    if (scheme := _SCHEME.match(uri)) and not uri.startswith(("s3://", "file://")):
        raise StorageError(
            f"{uri!r} is a URI ({scheme[1]}:) this tool does not read: give s3://bucket/prefix (in lower "
            "case, two slashes), file:///path, or a plain path"
        )
    if uri.startswith("s3://"):
        from colorize.storage.s3 import S3Storage  # boto3 is imported only for S3 URIs

        return S3Storage(uri, endpoint_url=endpoint_url)
    from colorize.storage.local import LocalStorage

    return LocalStorage(uri)


def split_uri(uri: str) -> tuple[str, str]:
    """(parent, name) of a file's URI or path: ``s3://b/p/x.jpg`` -> (``s3://b/p``, ``x.jpg``)."""
    base, _, name = uri.rstrip("/").rpartition("/")
    if not base:
        base = "/" if uri.startswith("/") else "."
    return base, name


def read_uri(uri: str, endpoint_url: str | None = None) -> bytes:
    """The whole file at a full URI or path (a manifest's ``source_uri``, a CSV's ``gray_uri``).

    Raises FileNotFoundError when it does not exist, StorageError when the storage fails.
    """
    base, name = split_uri(uri)
    return open_storage(base, endpoint_url).read_bytes(name)


def join_uri(base: str, key: str) -> str:
    """``base`` + ``/`` + ``key`` for URIs and paths alike."""
    return base.rstrip("/") + "/" + key
