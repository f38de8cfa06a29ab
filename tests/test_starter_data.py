"""Unit tests for scripts/starter_data.py: no network, no /work/shared; every archive is built here.

The RCC builder below follows Qt's rcc.cpp layout independently of the reader under test
(header, data block, names block, breadth-first tree with siblings sorted by name hash).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import struct
import sys
import tarfile
import zlib
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load_script() -> ModuleType:
    """Import scripts/starter_data.py, which is a script and not part of a package."""
    spec = importlib.util.spec_from_file_location("starter_data", REPO / "scripts" / "starter_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["starter_data"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


sd = _load_script()
COLUMNS = "\t".join(sd.COLUMNS)


# --------------------------------------------------------------------------- builders


def qt_hash(name: str) -> int:
    """Qt's qt_hash over UTF-16 code units, which rcc stores with each name and sorts siblings by."""
    h = 0
    for unit in struct.unpack(f">{len(name)}H", name.encode("utf-16-be")):
        h = (h << 4) + unit
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def build_rcc(files: dict[str, tuple[bytes, int]], version: int = 3) -> bytes:
    """A binary .rcc holding ``files`` ({"/a/b.txt": (content, flags)}; flags 1 = zlib, 4 = zstd)."""
    tree: dict[str, object] = {}
    for path, item in files.items():
        *folders, leaf = path.strip("/").split("/")
        node = tree
        for folder in folders:
            node = node.setdefault(folder, {})  # type: ignore[assignment]
        node[leaf] = item

    names, data = bytearray(), bytearray()
    node_size = 14 if version == 1 else 22
    nodes: list[bytes] = [b""]
    queue: list[tuple[int, int, dict[str, object]]] = [(0, 0, tree)]

    def add_name(name: str) -> int:
        offset = len(names)
        names.extend(struct.pack(">HI", len(name), qt_hash(name)) + name.encode("utf-16-be"))
        return offset

    def pack_node(name_offset: int, flags: int, a: int, b: int, directory: bool) -> bytes:
        body = (
            struct.pack(">IHII", name_offset, flags, a, b)
            if directory
            else struct.pack(">IHHHI", name_offset, flags, 0, 1, b)
        )
        return body + (struct.pack(">Q", 0) if version >= 2 else b"")

    while queue:  # breadth first, as rcc writes it: a folder's children are consecutive nodes
        index, name_offset, folder = queue.pop(0)
        children = sorted(folder.items(), key=lambda kv: qt_hash(kv[0]))
        first = len(nodes)
        nodes[index] = pack_node(name_offset, 0x02, len(children), first, True)
        nodes.extend(b"" for _ in children)
        for i, (name, item) in enumerate(children):
            offset = add_name(name)
            if isinstance(item, dict):
                queue.append((first + i, offset, item))
                continue
            content, flags = item  # type: ignore[misc]
            if flags & 0x01:
                content = struct.pack(">I", len(content)) + zlib.compress(content)
            nodes[first + i] = pack_node(offset, flags, 0, len(data), False)
            data.extend(struct.pack(">I", len(content)) + content)

    header_size = 24 if version >= 3 else 20
    data_offset = header_size
    names_offset = data_offset + len(data)
    tree_offset = names_offset + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_offset, data_offset, names_offset)
    if version >= 3:
        header += struct.pack(">I", 1 if any(f & 1 for _, f in files.values()) else 0)
    blob = header + bytes(data) + bytes(names) + b"".join(nodes)
    assert all(len(n) == node_size for n in nodes)
    return blob


def _tar_xz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A data.tar.xz as dpkg-deb writes it: member names start with "./"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(f"./{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def build_deb(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A minimal .deb: an ar archive of debian-binary, control.tar.xz and data.tar.xz."""
    parts = [("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({})), ("data.tar.xz", _tar_xz(members, links))]
    out = bytearray(b"!<arch>\n")
    for name, content in parts:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(content):<10}`\n".encode("ascii")
        out += content + (b"\n" if len(content) % 2 else b"")
    return bytes(out)


def row(dest: str, content: bytes, *, kind: str = "deb", member: str = "", rcc_entry: str = "") -> str:
    """One manifest line for ``content``."""
    member = member or f"usr/share/demo/{dest}"
    digest = hashlib.sha256(content).hexdigest()
    return "\t".join(["train", kind, "demo", "1:1.0-1", member, rcc_entry, dest, digest, str(len(content)), "CC0"])


def write_manifest(path: Path, lines: list[str]) -> Path:
    """Write a manifest with the header and ``lines``."""
    path.write_text("\n".join([COLUMNS, *lines]) + "\n", encoding="utf-8")
    return path


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    """A JPEG whose left half is red and right half blue, so a turn is visible after compression."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# --------------------------------------------------------------------------- RCC reader


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reads_plain_and_zlib_entries(version: int) -> None:
    plain, packed = b"\x89PNG plain bytes", b"compressible " * 50
    blob = build_rcc(
        {"/a/res/plain.png": (plain, 0), "/a/res/packed.txt": (packed, 0x01), "/top.txt": (b"t", 0)}, version
    )
    rcc = sd.RccArchive(blob)
    assert rcc.version == version
    assert rcc.read("/a/res/plain.png") == plain
    assert rcc.read("/a/res/packed.txt") == packed
    assert rcc.read("top.txt") == b"t"
    assert rcc.paths() == ["/a/res/packed.txt", "/a/res/plain.png", "/top.txt"]


def test_rcc_zstd_flag_goes_to_zstd(monkeypatch: pytest.MonkeyPatch) -> None:
    # No real bundle here uses zstd; check the dispatch without needing a zstd library.
    monkeypatch.setattr(sd, "zstd_decompress", lambda data: b"unzstd:" + data)
    rcc = sd.RccArchive(build_rcc({"/z.bin": (b"frame", 0x04)}))
    assert rcc.read("/z.bin") == b"unzstd:frame"


def test_rcc_missing_entry_and_bad_blobs() -> None:
    rcc = sd.RccArchive(build_rcc({"/a/x.png": (b"x", 0)}))
    with pytest.raises(KeyError):
        rcc.read("/a/y.png")
    with pytest.raises(KeyError):
        rcc.read("/a")  # a folder, not a file
    with pytest.raises(sd.StarterDataError, match="qres"):
        sd.RccArchive(b"PK\x03\x04 not an rcc")
    truncated = build_rcc({"/a/x.png": (b"x" * 100, 0)})[:40]
    with pytest.raises(sd.StarterDataError):
        sd.RccArchive(truncated).read("/a/x.png")


# --------------------------------------------------------------------------- manifest


def test_manifest_parses_and_groups(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.tsv", [row("a.jpg", b"a"), row("b.png", b"b", kind="whl", member="pkg/b.png")])
    entries = sd.read_manifest(path)
    assert [e.dest for e in entries] == ["a.jpg", "b.png"]
    assert entries[0].bytes == 1 and entries[0].version == "1:1.0-1"
    assert [str(p) for p in sd.group_by_package(entries)] == ["debian:demo=1:1.0-1", "pypi:demo==1:1.0-1"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (row("a.jpg", b"a", kind="sdist"), "unknown kind"),
        (row("../a.jpg", b"a"), "plain file name"),
        (row("a.jpg", b"a", kind="rcc"), "rcc_entry"),
        (row("a.jpg", b"a").replace("\tCC0", ""), "columns"),
    ],
)
def test_manifest_rejects_bad_rows(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(sd.StarterDataError, match=message):
        sd.read_manifest(write_manifest(tmp_path / "m.tsv", [line]))


def test_manifest_rejects_bad_header_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "h.tsv").write_text("pool\tkind\n", encoding="utf-8")
    with pytest.raises(sd.StarterDataError, match="header"):
        sd.read_manifest(tmp_path / "h.tsv")
    with pytest.raises(sd.StarterDataError, match="twice"):
        sd.read_manifest(write_manifest(tmp_path / "d.tsv", [row("a.jpg", b"a"), row("a.jpg", b"b")]))


def test_repository_manifest_matches_the_script() -> None:
    entries = sd.read_manifest(sd.DEFAULT_MANIFEST)
    assert len(entries) == 204
    dests = {e.dest for e in entries}
    assert set(sd.UPRIGHT) <= dests
    licenses = REPO / "data" / "starter-photos" / "licenses"
    debian = {e.package for e in entries if e.source.registry == "debian"}
    assert all((licenses / f"{name}.copyright").is_file() for name in debian)


# --------------------------------------------------------------------------- checking files


def test_check_file_names_the_wrong_file(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.tsv", [row("good.jpg", b"good"), row("bad.jpg", b"bad!")])
    entries = sd.read_manifest(manifest)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(b"good")
    (folder / "bad.jpg").write_bytes(b"BAD!")  # right size, wrong content
    assert sd.check_file(folder / "good.jpg", entries[0]) is None
    assert "bad.jpg: sha256" in sd.check_file(folder / "bad.jpg", entries[1])
    assert sd.check_bytes(b"bad", entries[1]).startswith("bad.jpg: 3 bytes")
    (folder / "good.jpg").unlink()
    assert sd.verify_dir(entries, folder) == ["good.jpg: missing", sd.check_file(folder / "bad.jpg", entries[1])]


def test_verify_command_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path / "m.tsv", [row("a.jpg", b"a")])
    (tmp_path / "a.jpg").write_bytes(b"a")
    assert sd.main(["--manifest", str(manifest), "verify", str(tmp_path)]) == 0
    (tmp_path / "a.jpg").write_bytes(b"z")
    assert sd.main(["--manifest", str(manifest), "verify", str(tmp_path)]) == 1
    assert "a.jpg: sha256" in capsys.readouterr().err


# --------------------------------------------------------------------------- .deb extraction and fetch


def test_read_deb_members(tmp_path: Path) -> None:
    deb = tmp_path / "demo_1.0-1_all.deb"
    deb.write_bytes(build_deb({"usr/share/a.jpg": b"odd", "usr/share/b.jpg": b"even"}, {"usr/share/l.jpg": "a.jpg"}))
    assert sd.read_deb_members(deb, ["usr/share/a.jpg", "usr/share/b.jpg"]) == {
        "usr/share/a.jpg": b"odd",
        "usr/share/b.jpg": b"even",
    }
    with pytest.raises(sd.StarterDataError, match="lacks usr/share/c.jpg"):
        sd.read_deb_members(deb, ["usr/share/c.jpg"])
    with pytest.raises(sd.StarterDataError, match="link"):
        sd.read_deb_members(deb, ["usr/share/l.jpg"])


def test_fetch_from_cached_deb_with_rcc(tmp_path: Path) -> None:
    photo, webp = b"jpeg bytes", b"RIFF webp bytes"
    rcc = build_rcc({"/demo/resource/cat.webp": (webp, 0), "/demo/Main.qml": (b"qml " * 20, 0x01)})
    cache = tmp_path / "cache"
    cache.mkdir()
    # apt-get download writes the epoch "1:" as "1%3a"; the cache lookup must find it.
    (cache / "demo_1%3a1.0-1_all.deb").write_bytes(build_deb({"usr/share/demo/a.jpg": photo, "usr/share/x.rcc": rcc}))
    lines = [
        row("a.jpg", photo),
        row("cat.webp", webp, kind="rcc", member="usr/share/x.rcc", rcc_entry="/demo/resource/cat.webp"),
    ]
    entries = sd.read_manifest(write_manifest(tmp_path / "m.tsv", lines))
    out = tmp_path / "out"
    report = sd.fetch(entries, out, cache)
    assert (report.written, report.skipped, report.problems, report.downloaded_bytes) == (2, 0, [], 0)
    assert (out / "cat.webp").read_bytes() == webp and (out / "a.jpg").read_bytes() == photo
    again = sd.fetch(entries, out, cache)  # idempotent: nothing rewritten
    assert (again.written, again.skipped) == (0, 2)


def test_fetch_reports_mismatch_by_name(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "demo_1.0-1_all.deb").write_bytes(build_deb({"usr/share/demo/a.jpg": b"changed"}))
    entries = sd.read_manifest(write_manifest(tmp_path / "m.tsv", [row("a.jpg", b"original")]))
    report = sd.fetch(entries, tmp_path / "out", cache)
    assert report.written == 0
    assert len(report.problems) == 1 and report.problems[0].startswith("a.jpg: 7 bytes, manifest says 8")
    assert not (tmp_path / "out" / "a.jpg").exists()


# --------------------------------------------------------------------------- prepare


def test_prepare_turns_only_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sideways, other = jpeg_bytes((32, 16)), jpeg_bytes((8, 8))
    name = "kphotoalbum__wayne.jpg"
    monkeypatch.setattr(sd, "UPRIGHT", {name: sd.UPRIGHT[name]})
    monkeypatch.setattr(sd, "EXCLUDED", {"unlicensed.jpg": "no licence stated"})
    rows = [row(name, sideways), row("other.jpg", other), row("unlicensed.jpg", other)]
    entries = sd.read_manifest(write_manifest(tmp_path / "m.tsv", rows))
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / name).write_bytes(sideways)
    (src / "unlicensed.jpg").write_bytes(other)
    assert sd.prepare(entries, src, out) == ["other.jpg: missing"]  # unverified source: nothing written
    assert not out.exists()

    (src / "other.jpg").write_bytes(other)
    assert sd.prepare(entries, src, out) == []
    assert (out / "other.jpg").read_bytes() == other  # byte for byte
    assert not (out / "unlicensed.jpg").exists()  # left out for its licence
    with Image.open(out / name) as img:
        assert img.size == (16, 32)
        rgb = img.convert("RGB")  # ROTATE_270 turns clockwise: the red left half becomes the top half
        assert rgb.getpixel((8, 4))[0] > 200 and rgb.getpixel((8, 28))[2] > 200
    assert sd.prepare(entries, src, src)[0].startswith("prepare needs a separate output folder")


def test_every_starter_photo_is_credited() -> None:
    from scripts.check_attributions import DEFAULT_DIR, missing_dests

    total, missing = missing_dests(DEFAULT_DIR)
    assert total == 204 and missing == []
    excluded = set(sd.EXCLUDED)
    text = (DEFAULT_DIR / "ATTRIBUTIONS.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in text for name in excluded)


def test_the_model_card_lists_every_photo_with_its_attribution() -> None:
    from scripts.check_attributions import DEFAULT_DIR, missing_dests

    card = DEFAULT_DIR.parent.parent / "MODEL_CARD.md"
    attributions = (DEFAULT_DIR / "ATTRIBUTIONS.md").read_text(encoding="utf-8")
    section = attributions[attributions.index("## Attributions by package") :]
    assert section in card.read_text(encoding="utf-8")  # the card carries the attributions verbatim
    assert missing_dests(DEFAULT_DIR)[1] == []
