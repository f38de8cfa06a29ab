"""A JPEG's metadata segments, found and written as bytes: the quick way for the common case.

exiv2 (:mod:`colorize.provenance`) parses and rewrites a whole file to read or write its metadata,
and holds Python's GIL while it does: about 0.3 ms of CPU per 1600x1200 JPEG here, and the part
of a GPU run's per-file work that did not scale across threads (``bench/RESULTS.md``). Most scans
and every output of our encoders carry no metadata at all. For them, finding that out is a walk
over a few segment headers, and marking an output is two APP1 segments (EXIF, XMP) and an APP2 one
(its ICC profile) put after its JFIF header.
Anything less plain (metadata to carry, non-ASCII EXIF text, a packet over one segment) is left
to exiv2.
"""

from __future__ import annotations

from collections.abc import Mapping

from PIL import Image

_SOI, _SOS, _EOI = 0xD8, 0xDA, 0xD9
_APP0, _APP1, _APP13 = 0xE0, 0xE1, 0xED
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn: markers without a length
_MAX_PAYLOAD = 0xFFFF - 2  # a segment's length field counts itself
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
ICC_HEADER = b"ICC_PROFILE\x00"


def _segments(data: bytes) -> list[tuple[int, int, int]] | None:
    """(marker, start, end) of each segment before the scan data; None if the bytes are not a plain JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    found, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (_SOS, _EOI, _SOI):
            return found
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > len(data):
            return None
        found.append((marker, pos, end))
        pos = end
    return None


def _has_metadata(segments: list[tuple[int, int, int]]) -> bool:
    """APP1 holds EXIF and XMP, APP13 Photoshop's IPTC."""
    return any(marker in (_APP1, _APP13) for marker, _, _ in segments)


def carries_metadata(data: bytes) -> bool:
    """Whether a file may hold EXIF, XMP or IPTC: True unless it is a JPEG whose headers show none.

    Anything that does not parse as a plain JPEG answers True, so that exiv2 reads it (and says
    what it makes of it).
    """
    segments = _segments(data)
    return segments is None or _has_metadata(segments)


def exif_segment(ascii_tags: Mapping[int, str]) -> bytes | None:
    """An APP1 EXIF payload holding these IFD0 ASCII tags (Pillow writes the TIFF structure).

    None when a value is not ASCII: Pillow would write ``?`` for it, where exiv2 keeps UTF-8.
    """
    if not all(value.isascii() for value in ascii_tags.values()):
        return None
    exif = Image.Exif()
    for tag, value in ascii_tags.items():
        exif[tag] = value
    payload = exif.tobytes()  # starts with "Exif\0\0"
    return payload if len(payload) <= _MAX_PAYLOAD else None


def xmp_segment(packet: bytes) -> bytes | None:
    """An APP1 XMP payload; None when the packet needs more than one segment (extended XMP)."""
    payload = XMP_HEADER + packet
    return payload if len(payload) <= _MAX_PAYLOAD else None


def icc_segment(profile: bytes) -> bytes | None:
    """An APP2 ICC payload holding the whole profile (chunk 1 of 1); None when it needs more than one."""
    payload = ICC_HEADER + b"\x01\x01" + profile
    return payload if len(payload) <= _MAX_PAYLOAD else None


def with_app_segments(jpeg: bytes, app1: list[bytes], app2: list[bytes]) -> bytes | None:
    """The JPEG with these APP1 then APP2 payloads added after its JFIF header; its other bytes unchanged.

    None when it already holds EXIF, XMP or IPTC (merging with them is exiv2's job) or is not a
    plain JPEG.
    """
    segments = _segments(jpeg)
    if segments is None or _has_metadata(segments):
        return None
    # EXIF wants to come first; JFIF's APP0, when there is one, must stay right after SOI.
    at = segments[0][2] if segments and segments[0][0] == _APP0 else 2
    added = b"".join(
        marker + (len(p) + 2).to_bytes(2, "big") + p for marker, group in ((b"\xff\xe1", app1), (b"\xff\xe2", app2))
        for p in group
    )  # fmt: skip
    return jpeg[:at] + added + jpeg[at:]
