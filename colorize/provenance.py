"""Provenance: every output says, inside the file, that it is machine-coloured, from which scan, by which model.

An archive that publishes a colorized photograph must never let it pass for an original. Each output
therefore carries, in its own bytes:

- an XMP packet with the IPTC digital source type ``compositeWithTrainedAlgorithmicMedia`` (what
  web platforms read to label AI-made or AI-edited images), a ``dc:description`` saying the colours
  were made by a machine, standard links to the scan (``xmpMM:DerivedFrom``, ``dc:source``) and the
  tool (``xmp:CreatorTool``), and the exact source, model and run in our own namespace
  (:data:`NS_COLORIZE`, prefix ``colorize``);
- the scan's own descriptive metadata (XMP, EXIF and IPTC: title, creator, rights, dates...), so the
  archive's cataloguing travels with the picture; ours is added beside it and never overwrites it;
- sRGB's ICC profile (JPEG, PNG, TIFF, WebP; a .jp2 names sRGB in its header box already), so that
  colour-managed software shows the colours meant; the scan's own profile says nothing true of
  the output, whose pixels are sRGB (:mod:`colorize.icc`), and is not carried;
- optionally, a signed C2PA manifest (Content Credentials) with a ``c2pa.edited`` action of the same
  digital source type and the scan as its parent ingredient (:func:`colorize.c2pa_signing.sign_c2pa`).

exiv2 (through ``pyexiv2``, which bundles it) reads and writes the metadata of JPEG, PNG, TIFF (8 and
16 bit), WebP and JPEG 2000 (.jp2) in memory. C2PA has no binding for JPEG 2000: signed runs write
its outputs with the XMP alone, and the manifest says ``xmp``. A JPEG with no metadata to carry gets
the same EXIF tags and XMP statements as two segments written as bytes
(:mod:`colorize.jpeg_segments`): exiv2's rewrite of the whole file held the GIL and bounded GPU
runs. BMP has no place for XMP: BMP outputs carry nothing, and the manifest records their
provenance as ``none``. The XMP packet itself is built with ElementTree (RDF/XML); untrusted
packets from scans are parsed with ``defusedxml``.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import defusedxml.ElementTree as SafeET
import pyexiv2
from defusedxml import DefusedXmlException
from PIL import Image

from colorize import __version__
from colorize.color import COLOUR_METHOD
from colorize.icc import SRGB_PROFILE
from colorize.imaging import dpi_of, is_quarter_turn, with_jp2_resolution
from colorize.jpeg_segments import carries_metadata, exif_segment, icc_segment, with_app_segments, xmp_segment

log = logging.getLogger(__name__)

SOFTWARE = "archive-colorize"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
NS_COLORIZE = "https://archive-colorize.example/ns/provenance/1.0/"

# What the manifest's ``provenance`` column says an output carries.
XMP, XMP_C2PA, NONE = "xmp", "xmp+c2pa", "none"
UNMARKED_FORMATS = frozenset({"BMP"})  # no XMP, EXIF or C2PA container in the format
# XMP, EXIF and IPTC, but no C2PA binding: the C2PA specification defines none for JPEG 2000.
UNSIGNED_FORMATS = UNMARKED_FORMATS | {"JPEG2000"}
# Outputs that carry sRGB's ICC profile, which says what their numbers mean to colour-managed software
# (an editor whose working space is Adobe RGB shows an untagged file as Adobe RGB). A .jp2 file
# names sRGB in its colour specification box (the encoder's enumerated space), BMP has no place.
PROFILED_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "WEBP"})
_SRGB_SEGMENT = icc_segment(SRGB_PROFILE) or b""  # 588 bytes: one APP2 segment holds it
_NO_IPTC_FORMATS = frozenset({"WEBP"})  # exiv2 (and the format's RIFF chunks) hold no IPTC-IIM

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "stRef": "http://ns.adobe.com/xap/1.0/sType/ResourceRef#",
    "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
    "xmpRights": "http://ns.adobe.com/xap/1.0/rights/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "colorize": NS_COLORIZE,
}
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Prefixes for serialising: ElementTree's map is process-wide, and these are the standard ones.
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

# exiv2 keeps process-wide state (its XMP toolkit, pyexiv2's error log): one image at a time.
# pyexiv2 holds the GIL during its calls anyway, so the lock costs no parallelism.
_EXIV2 = threading.Lock()
# pyexiv2 raises on every message exiv2 logs at or above this level. Writing: errors raise (an
# output must never go out without its provenance). Reading a scan: see exiv2_reading().
_WRITE_LOG_LEVEL, _MUTE = 3, 4
pyexiv2.set_log_level(_WRITE_LOG_LEVEL)
pyexiv2.registerNs(NS_COLORIZE, "colorize")

# Properties of the scan's XMP that ours replace (each may appear once in a packet).
_REPLACED = {
    ("Iptc4xmpExt", "DigitalSourceType"),
    ("xmp", "CreatorTool"),
    ("xmpMM", "DocumentID"),
    ("xmpMM", "InstanceID"),
    ("xmpMM", "DerivedFrom"),
    ("dc", "description"),
}
# Properties that describe the scan's pixels, not the output's: kept, they would mislead (an
# orientation would rotate the upright output again, a gray colour mode would be false).
_STALE = {
    ("tiff", "Orientation"), ("tiff", "ImageWidth"), ("tiff", "ImageLength"), ("tiff", "BitsPerSample"),
    ("tiff", "Compression"), ("tiff", "PhotometricInterpretation"), ("tiff", "SamplesPerPixel"),
    ("tiff", "PlanarConfiguration"), ("exif", "PixelXDimension"), ("exif", "PixelYDimension"),
    ("exif", "ColorSpace"), ("photoshop", "ColorMode"), ("photoshop", "ICCProfile"),
}  # fmt: skip

# EXIF carried from the scan: its descriptive tags only. Structure (sizes, strips, orientation,
# thumbnails, maker notes with their private offsets) belongs to the scan's pixels and is dropped.
_EXIF_IMAGE_KEEP = frozenset({
    "ImageDescription", "Artist", "Copyright", "DateTime", "Make", "Model", "DocumentName", "PageName",
    "HostComputer", "XPTitle", "XPComment", "XPAuthor", "XPKeywords", "XPSubject", "Rating", "RatingPercent",
    "XResolution", "YResolution", "ResolutionUnit",
})  # fmt: skip
_EXIF_RESOLUTION = frozenset({"Exif.Image.XResolution", "Exif.Image.YResolution", "Exif.Image.ResolutionUnit"})
_EXIF_PHOTO_DROP = frozenset({
    "MakerNote", "PixelXDimension", "PixelYDimension", "InteroperabilityTag", "ComponentsConfiguration",
    "CompressedBitsPerPixel",
})  # fmt: skip
_IPTC_DROP = frozenset({
    "Iptc.Application2.RecordVersion", "Iptc.Application2.Preview", "Iptc.Application2.PreviewFormat",
    "Iptc.Application2.PreviewVersion",
})  # fmt: skip
_EXIF_TAG_IDS = {"Exif.Image.ImageDescription": 0x010E, "Exif.Image.Software": 0x0131}  # what we write, by tag number
_IPTC_UTF8 = "\x1b%G"  # ISO 2022 escape for UTF-8 in Iptc.Envelope.CharacterSet


class ProvenanceError(ValueError):
    """Provenance cannot be written as asked (signing not set up, unusable certificate or key)."""


@dataclass(frozen=True)
class ProvenanceInfo:
    """What an output says about itself."""

    source_uri: str
    source_sha256: str
    model_id: str
    model_sha256: str
    run_id: str
    software: str = SOFTWARE
    software_version: str = __version__
    colour_method: str = COLOUR_METHOD  # how the model's chroma was taken to full resolution

    @property
    def creator_tool(self) -> str:
        return f"{self.software} {self.software_version}"

    @property
    def description(self) -> str:
        return (
            f"Colorized automatically by {self.creator_tool} with model {self.model_id}; "
            "the colours are a machine's guess, not a record."
        )

    @property
    def document_id(self) -> str:
        """Stable for one scan coloured by one model: a rerun makes the same document again."""
        name = f"{NS_COLORIZE}{self.source_sha256}/{self.model_sha256}"
        return "xmp.did:" + str(uuid.uuid5(uuid.NAMESPACE_URL, name))

    @property
    def instance_id(self) -> str:
        """One per run that wrote the file."""
        return "xmp.iid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.document_id}/{self.run_id}"))

    def fields(self) -> dict[str, str]:
        """Our namespace's properties, camelCase as XMP spells them."""
        return {
            "sourceUri": self.source_uri, "sourceSha256": self.source_sha256, "modelId": self.model_id,
            "modelSha256": self.model_sha256, "software": self.software, "softwareVersion": self.software_version,
            "runId": self.run_id, "colourMethod": self.colour_method,
        }  # fmt: skip


@dataclass(frozen=True)
class SourceMetadata:
    """The scan's own metadata worth carrying to its output (small: read once, the bytes are dropped)."""

    xmp: str = ""
    exif: dict[str, Any] = field(default_factory=dict)  # exiv2 keys -> values, descriptive tags only
    iptc: dict[str, Any] = field(default_factory=dict)
    problem: str = ""  # what of it cannot be carried over, and why: the output's row says so

    @property
    def colorized_by_us(self) -> bool:
        """Whether the scan's XMP says it is one of our outputs."""
        return NS_COLORIZE in self.xmp and DIGITAL_SOURCE_TYPE in self.xmp


def qname(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


# --- reading the scan ---------------------------------------------------------------------------


@contextmanager
def exiv2_reading(data: bytes) -> Iterator[Any]:
    """exiv2 on a file's bytes, for reading: one part it cannot parse (a broken XMP packet, an odd
    EXIF value) is logged by exiv2 and skipped, so the other parts are still read."""
    with _EXIV2:
        pyexiv2.set_log_level(_MUTE)
        try:
            with pyexiv2.ImageData(data) as img:
                yield img
        finally:
            pyexiv2.set_log_level(_WRITE_LOG_LEVEL)


def exiv2_decoded(read: Any) -> Any:
    """An exiv2 read, as UTF-8, or Latin-1 when a camera or scanner wrote other bytes."""
    try:
        return read("utf-8")
    except UnicodeDecodeError:
        return read("latin-1")


def _keep_exif(key: str) -> bool:
    _, group, name = key.split(".", 2) if key.count(".") >= 2 else ("", "", "")
    if group == "Image":
        return name in _EXIF_IMAGE_KEEP
    if group == "Photo":
        return name not in _EXIF_PHOTO_DROP
    return group == "GPSInfo"


# The language exiv2 gives the item it keeps of a language property that was no rdf:Alt (an
# rdf:Bag of descriptions, say): the others are gone before we see the packet.
_REPAIRED = 'xml:lang="x-repair"'


def source_metadata(data: bytes, name: str = "") -> SourceMetadata:
    """The descriptive metadata of a scan's bytes; empty when it has none or exiv2 cannot read it.

    A scan whose metadata cannot be read, or whose XMP is not XML, still gets colorized, with
    what could be read and our provenance; ``problem`` says what was left behind (and it is
    logged, naming the scan by ``name``, its URI).
    """
    if not carries_metadata(data):
        return SourceMetadata()  # a JPEG with none: no need for exiv2 to parse the whole file
    try:
        with exiv2_reading(data) as img:
            xmp = exiv2_decoded(img.read_raw_xmp) if img.get_access_mode().get("xmp") else ""
            exif = exiv2_decoded(img.read_exif) if img.get_access_mode().get("exif") else {}
            iptc = exiv2_decoded(img.read_iptc) if img.get_access_mode().get("iptc") else {}
    except (RuntimeError, ValueError) as err:
        log.warning("%s: the scan's metadata is unreadable and not carried over: %s", name or "a scan", err)
        return SourceMetadata(problem=f"the scan's metadata could not be read and is not in the output ({err})")
    problem = ""
    if xmp.strip() and (error := _xml_error(xmp)):
        log.warning("%s: the XMP is not well-formed and not carried over: %s", name or "a scan", error)
        xmp, problem = "", f"the scan's XMP is not well-formed XML and is not in the output ({error})"
    elif xmp.strip() and parse_packet(xmp, name) is None:
        log.warning("%s: the XMP holds no rdf:RDF and is not carried over", name or "a scan")
        xmp, problem = "", "the scan's XMP is XML but holds no RDF (rdf:RDF) and is not in the output"
    elif _REPAIRED in xmp:
        problem = (
            "the scan's XMP has a language property (dc:description, dc:title or dc:rights) that is not a "
            "language alternative (rdf:Alt), as XMP requires; exiv2 repaired it and kept one of its items"
        )
    kept = {k: v for k, v in exif.items() if _keep_exif(k)}
    if is_quarter_turn(exif.get("Exif.Image.Orientation", 1)):
        # The output is upright: its x is the stored scan's y, for the resolution as for the sides.
        x, y = kept.pop("Exif.Image.XResolution", None), kept.pop("Exif.Image.YResolution", None)
        kept |= {k: v for k, v in (("Exif.Image.XResolution", y), ("Exif.Image.YResolution", x)) if v is not None}
    return SourceMetadata(
        xmp=xmp,
        exif=kept,
        iptc={k: v for k, v in iptc.items() if k.startswith("Iptc.Application2.") and k not in _IPTC_DROP},
        problem=problem,
    )


# --- the XMP packet -------------------------------------------------------------------------------


def _xml(text: str) -> ET.Element:
    """Parse untrusted XML (defusedxml: no entity expansion, no external references)."""
    return SafeET.fromstring(text.strip().lstrip("\ufeff").encode("utf-8"))


def _xml_error(text: str) -> str:
    """Why ``text`` is not well-formed XML, or "" when it is."""
    try:
        _xml(text)
    except (ET.ParseError, DefusedXmlException, ValueError) as err:
        return str(err)
    return ""


def parse_packet(packet: str, name: str = "") -> ET.Element | None:
    """The x:xmpmeta element of a packet (made when the packet starts at rdf:RDF), or None.

    ``name`` (the file's URI) names the file in the warning about a packet that is not XML.
    """
    text = packet.strip().lstrip("\ufeff")
    if not text:
        return None
    try:
        root = _xml(text)
    except (ET.ParseError, DefusedXmlException, ValueError) as err:
        log.warning("%s: the XMP is not well-formed and not carried over: %s", name or "a scan", err)
        return None
    if root.tag == qname("x", "xmpmeta") and root.find(qname("rdf", "RDF")) is not None:
        return root
    rdf = root if root.tag == qname("rdf", "RDF") else root.find(f".//{qname('rdf', 'RDF')}")
    if rdf is None:
        return None
    meta = ET.Element(qname("x", "xmpmeta"))
    meta.append(rdf)
    return meta


def _descriptions(rdf: ET.Element) -> list[ET.Element]:
    return rdf.findall(qname("rdf", "Description"))


def _has(rdf: ET.Element, prefix: str, name: str) -> bool:
    tag = qname(prefix, name)
    return any(tag in d.attrib or d.find(tag) is not None for d in _descriptions(rdf))


def xmp_values(rdf: ET.Element, prefix: str, name: str) -> list[ET.Element | str]:
    """A property's values in every rdf:Description (attribute or element form)."""
    tag, found = qname(prefix, name), []
    for desc in _descriptions(rdf):
        found += [desc.attrib[tag]] if tag in desc.attrib else []
        found += desc.findall(tag)
    return found


def _pop(rdf: ET.Element, prefix: str, name: str) -> list[ET.Element | str]:
    """Remove a property from every rdf:Description (element or attribute form); return its values."""
    tag, found = qname(prefix, name), []
    for desc in _descriptions(rdf):
        if tag in desc.attrib:
            found.append(desc.attrib.pop(tag))
        for child in desc.findall(tag):
            desc.remove(child)
            found.append(child)
    return found


def _drop_namespace(rdf: ET.Element, uri: str) -> None:
    prefix = f"{{{uri}}}"
    for desc in _descriptions(rdf):
        for key in [k for k in desc.attrib if k.startswith(prefix)]:
            del desc.attrib[key]
        for child in [c for c in desc if c.tag.startswith(prefix)]:
            desc.remove(child)


def xmp_text(values: list[ET.Element | str]) -> str:
    """The value of a simple property (text, or an rdf:resource URI)."""
    for value in values:
        if isinstance(value, str):
            return value.strip()
        text = (value.text or "").strip() or value.get(qname("rdf", "resource"), "")
        if text:
            return text
    return ""


def lang_alt(values: list[ET.Element | str]) -> dict[str, str]:
    """A language alternative (dc:description) as {lang: text}; a plain string counts as x-default."""
    alts: dict[str, str] = {}
    for value in values:
        if isinstance(value, str) or value.find(f".//{qname('rdf', 'li')}") is None:
            if text := xmp_text([value]):
                alts.setdefault("x-default", text)
            continue
        for li in value.iter(qname("rdf", "li")):
            alts.setdefault(li.get(XML_LANG, "x-default"), (li.text or "").strip())
    if "x-default" not in alts and "x-repair" in alts:  # exiv2's name for what a non-Alt held: the default
        alts["x-default"] = alts.pop("x-repair")
    return alts


def combined_description(original: str, ours: str) -> str:
    """The scan's description with ours appended, so that any reader that shows one shows ours."""
    original = original.strip()
    if not original or ours in original:
        return original or ours
    return f"{original}\n\n{ours}"


def _simple(parent: ET.Element, prefix: str, name: str, value: str) -> None:
    if value:
        ET.SubElement(parent, qname(prefix, name)).text = value


def _add_description(desc: ET.Element, alts: dict[str, str], ours: str) -> None:
    alt = ET.SubElement(ET.SubElement(desc, qname("dc", "description")), qname("rdf", "Alt"))
    langs = ["x-default"] + sorted(lang for lang in alts if lang != "x-default")
    for lang in langs:
        li = ET.SubElement(alt, qname("rdf", "li"), {XML_LANG: lang})
        li.text = combined_description(alts.get(lang, ""), ours)


def _add_derived_from(desc: ET.Element, source_uri: str, document_id: str, instance_id: str) -> None:
    ref = ET.SubElement(desc, qname("xmpMM", "DerivedFrom"), {qname("rdf", "parseType"): "Resource"})
    _simple(ref, "stRef", "documentID", document_id)
    _simple(ref, "stRef", "instanceID", instance_id)
    _simple(ref, "stRef", "filePath", source_uri)


def provenance_xmp(info: ProvenanceInfo, source_xmp: str = "") -> bytes:
    """The output's XMP packet: the scan's packet, less what no longer holds, with ours added.

    The scan's properties stay as they are (dc:title, dc:creator, dc:rights, xmpRights, dates,
    keywords, history...), except: properties describing the scan's pixels (orientation, size,
    colour mode) are dropped; the digital source type, creator tool and document/instance IDs
    become ours; the description gets ours appended in every language (see
    :func:`combined_description`); ``dc:source`` is set to the scan's URI only when the scan has
    none (an archive's own ``dc:source`` is cataloguing and is kept). Ours go in one more
    ``rdf:Description``, with the same ``rdf:about`` as the scan's.

    Returns:
        A UTF-8 XMP packet (``<?xpacket begin ...?>`` ... ``<?xpacket end="w"?>``).
    """
    meta = parse_packet(source_xmp, info.source_uri)
    if meta is None:
        meta = ET.Element(qname("x", "xmpmeta"))
        ET.SubElement(meta, qname("rdf", "RDF"))
    meta.set(qname("x", "xmptk"), info.creator_tool)
    rdf = meta.find(qname("rdf", "RDF"))
    assert rdf is not None
    old = {key: _pop(rdf, *key) for key in _REPLACED | _STALE}
    _drop_namespace(rdf, NS_COLORIZE)  # a colorized scan coloured again: its old claims are not ours
    about = next((d.get(qname("rdf", "about"), "") for d in _descriptions(rdf)), "")
    for d in _descriptions(rdf):  # the XMP toolkit requires one subject: a scan's odd packet may name two
        d.set(qname("rdf", "about"), about)
    has_source, has_original = _has(rdf, "dc", "source"), _has(rdf, "xmpMM", "OriginalDocumentID")
    source_doc, source_instance = xmp_text(old[("xmpMM", "DocumentID")]), xmp_text(old[("xmpMM", "InstanceID")])

    desc = ET.SubElement(rdf, qname("rdf", "Description"), {qname("rdf", "about"): about})
    _simple(desc, "Iptc4xmpExt", "DigitalSourceType", DIGITAL_SOURCE_TYPE)
    _add_description(desc, lang_alt(old[("dc", "description")]), info.description)
    if not has_source:
        _simple(desc, "dc", "source", info.source_uri)
    _simple(desc, "xmp", "CreatorTool", info.creator_tool)
    _simple(desc, "xmpMM", "DocumentID", info.document_id)
    _simple(desc, "xmpMM", "InstanceID", info.instance_id)
    if not has_original:
        _simple(desc, "xmpMM", "OriginalDocumentID", source_doc)
    _add_derived_from(desc, info.source_uri, source_doc, source_instance)
    for name, value in info.fields().items():
        _simple(desc, "colorize", name, value)
    _simple(desc, "colorize", "sourceDigitalSourceType", xmp_text(old[("Iptc4xmpExt", "DigitalSourceType")]))
    return _packet(meta)


def _packet(meta: ET.Element) -> bytes:
    begin = ET.ProcessingInstruction("xpacket", 'begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"')
    end = ET.ProcessingInstruction("xpacket", 'end="w"')
    parts = (ET.tostring(node, encoding="unicode") for node in (begin, meta, end))
    return "\n".join(parts).encode("utf-8")


# --- writing the output ---------------------------------------------------------------------------


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _output_exif(carried: dict[str, Any], info: ProvenanceInfo, fmt: str) -> dict[str, Any]:
    # A TIFF's resolution tags are its own IFD0 tags, already written by the encoder.
    exif = {k: v for k, v in carried.items() if fmt != "TIFF" or k not in _EXIF_RESOLUTION}
    described = _str(carried.get("Exif.Image.ImageDescription"))
    exif["Exif.Image.ImageDescription"] = combined_description(described, info.description)
    exif["Exif.Image.Software"] = info.creator_tool  # EXIF's twin of xmp:CreatorTool
    return exif


def _output_iptc(carried: dict[str, Any], info: ProvenanceInfo, fmt: str) -> dict[str, Any]:
    # IPTC-IIM is legacy: written only to keep a scan's own IPTC in step with the XMP, never created.
    if not carried or fmt in _NO_IPTC_FORMATS:
        return {}
    iptc = dict(carried)
    caption = _str(carried.get("Iptc.Application2.Caption"))
    iptc["Iptc.Application2.Caption"] = combined_description(caption, info.description)
    iptc["Iptc.Envelope.CharacterSet"] = _IPTC_UTF8
    return iptc


def _write(output: bytes, fmt: str, exif: dict[str, Any], iptc: dict[str, Any], packet: str) -> bytes:
    with _EXIV2, pyexiv2.ImageData(output) as img:
        if fmt in PROFILED_FORMATS:
            img.modify_icc(SRGB_PROFILE)
        img.modify_exif(exif)
        if iptc:
            img.modify_iptc(iptc)
        # exiv2 parses the packet into its XMP model and writes it back in the toolkit's canonical
        # form (one rdf:Description, simple properties as attributes): the same statements.
        img.modify_raw_xmp(packet)
        return img.get_bytes()


def _dropped(written: bytes, exif: dict[str, Any], iptc: dict[str, Any]) -> list[str]:
    """The EXIF and IPTC keys asked for that the written file lacks.

    exiv2 leaves out, without an error, what its container cannot hold: an EXIF block over a
    JPEG segment's 64 KB, say (a 70 kB Artist tag vanished from a JPEG and a PNG output, and
    stayed in a TIFF one).
    """
    with exiv2_reading(written) as img:
        have = set(exiv2_decoded(img.read_exif)) | (set(exiv2_decoded(img.read_iptc)) if iptc else set())
    return sorted(k for k in (*exif, *iptc) if k not in have)


def embed(
    output: bytes, fmt: str, source: bytes | SourceMetadata, info: ProvenanceInfo, lost: list[str] | None = None
) -> bytes:
    """The output's bytes with provenance and the scan's descriptive metadata embedded.

    Args:
        output: the encoded output (as :func:`colorize.imaging.encode_image` made it).
        fmt: its Pillow format name. ``BMP`` is returned unchanged: it has no place for metadata.
        source: the scan's bytes, or its :func:`source_metadata` read earlier.
        info: what to say.
        lost: when given, gets a sentence for each part of the scan's metadata that could not be
            written into the output (the caller records it in the output's row).

    Raises:
        RuntimeError: exiv2 could not write the output (the caller records the file as failed:
            an output without provenance is never published).
    """
    if fmt in UNMARKED_FORMATS:
        return output
    meta = source if isinstance(source, SourceMetadata) else source_metadata(source, info.source_uri)
    packet = provenance_xmp(info, meta.xmp)
    # Without exiv2 only when nothing of the scan's is carried: exiv2's write is what checks the
    # scan's XMP is RDF the XMP toolkit (and so every exiv2-based reader) accepts.
    plain_ok = fmt == "JPEG" and not meta.exif and not meta.iptc and not meta.xmp
    if plain_ok and (plain := _embed_plain_jpeg(output, info, packet)):
        return plain
    exif, iptc = _output_exif(meta.exif, info, fmt), _output_iptc(meta.iptc, info, fmt)
    own_exif, own_packet = _output_exif({}, info, fmt), provenance_xmp(info) if meta.xmp else packet
    # A scan's odd metadata must not cost its output: what exiv2 refuses is left out, the scan's
    # XMP first (too large for a JPEG segment, or RDF the XMP toolkit rejects), then its EXIF and
    # IPTC, then both; our own statements are always written.
    attempts = [
        (exif, iptc, packet, ""),
        (exif, iptc, own_packet, "the scan's XMP could not be written and is not in the output"),
        (own_exif, {}, packet, "the scan's EXIF/IPTC could not be written and is not in the output"),
        (own_exif, {}, own_packet, "the scan's metadata could not be written and is not in the output"),
    ]
    first_error: Exception | None = None
    for tried_exif, tried_iptc, tried_packet, left_out in attempts if meta.xmp else attempts[::2]:
        try:
            marked = _write(output, fmt, tried_exif, tried_iptc, tried_packet.decode())
        except (RuntimeError, ValueError) as err:
            first_error = first_error or err
            continue
        said = f"{left_out} ({first_error})" if left_out else ""
        if not left_out and (dropped := _dropped(marked, exif, iptc) if meta.exif or meta.iptc else []):
            said = f"not in the output, as the {fmt} file could not hold it: the scan's {', '.join(dropped)}"
        break
    else:
        raise RuntimeError(f"exiv2 could not write our provenance into the {fmt} output ({first_error})")
    if said:
        log.warning("%s: %s", info.source_uri, said)
        if lost is not None:
            lost.append(said)
    return _resolution_kept(output, marked) if fmt == "JPEG2000" else marked


def _resolution_kept(before: bytes, after: bytes) -> bytes:
    """exiv2 writes a .jp2 file's header box anew, without its resolution box: put it back."""
    dpi = dpi_of(Image.open(io.BytesIO(before)))
    if dpi is None or dpi_of(Image.open(io.BytesIO(after))) is not None:
        return after
    return with_jp2_resolution(after, dpi)


def _embed_plain_jpeg(output: bytes, info: ProvenanceInfo, packet: bytes) -> bytes | None:
    """What :func:`_write` makes when there is no EXIF or IPTC to carry, as bytes without exiv2.

    The same EXIF tags and XMP statements; the packet as we serialise it rather than in exiv2's
    canonical form. None when it cannot be done so (see :mod:`colorize.jpeg_segments`).
    """
    tags = {_EXIF_TAG_IDS[key]: value for key, value in _output_exif({}, info, "JPEG").items()}
    exif, xmp = exif_segment(tags), xmp_segment(packet)
    return with_app_segments(output, [exif, xmp], [_SRGB_SEGMENT]) if exif and xmp else None


def provenance_kind(fmt: str, signed: bool) -> str:
    """The manifest's ``provenance`` value for an output format, in a run that signs or does not."""
    if fmt in UNMARKED_FORMATS:
        return NONE
    return XMP_C2PA if signed and fmt not in UNSIGNED_FORMATS else XMP
