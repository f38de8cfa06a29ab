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
- optionally, a signed C2PA manifest (Content Credentials) with a ``c2pa.edited`` action of the same
  digital source type and the scan as its parent ingredient (:func:`sign_c2pa`).

exiv2 (through ``pyexiv2``, which bundles it) reads and writes the metadata of JPEG, PNG, TIFF (8 and
16 bit) and WebP in memory. A JPEG with no metadata to carry gets the same EXIF tags and XMP
statements as two segments written as bytes (:mod:`colorize.jpeg_segments`): exiv2's rewrite of the
whole file held the GIL and bounded GPU runs. BMP has no place for XMP: BMP outputs carry nothing,
and the manifest records their provenance as ``none``. The XMP packet itself is built with
ElementTree (RDF/XML); untrusted packets from scans are parsed with ``defusedxml``.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import defusedxml.ElementTree as SafeET
import pyexiv2
from defusedxml import DefusedXmlException

from colorize import __version__
from colorize.jpeg_segments import carries_metadata, exif_segment, with_app1, xmp_segment
from colorize.storage import read_uri

log = logging.getLogger(__name__)

SOFTWARE = "archive-colorize"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
NS_COLORIZE = "https://archive-colorize.example/ns/provenance/1.0/"
C2PA_ASSERTION = "example.archive-colorize.provenance"  # entity-specific label: reverse domain of NS_COLORIZE

# What the manifest's ``provenance`` column says an output carries.
XMP, XMP_C2PA, NONE = "xmp", "xmp+c2pa", "none"
UNMARKED_FORMATS = frozenset({"BMP"})  # no XMP, EXIF or C2PA container in the format
_NO_IPTC_FORMATS = frozenset({"WEBP"})  # exiv2 (and the format's RIFF chunks) hold no IPTC-IIM
_C2PA_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp", "BMP": "image/bmp"}

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
# output must never go out without its provenance). Reading a scan: see _reading().
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
            "runId": self.run_id,
        }  # fmt: skip


@dataclass(frozen=True)
class SourceMetadata:
    """The scan's own metadata worth carrying to its output (small: read once, the bytes are dropped)."""

    xmp: str = ""
    exif: dict[str, Any] = field(default_factory=dict)  # exiv2 keys -> values, descriptive tags only
    iptc: dict[str, Any] = field(default_factory=dict)

    @property
    def colorized_by_us(self) -> bool:
        """Whether the scan's XMP says it is one of our outputs."""
        return NS_COLORIZE in self.xmp and DIGITAL_SOURCE_TYPE in self.xmp


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


# --- reading the scan ---------------------------------------------------------------------------


@contextmanager
def _reading(data: bytes) -> Iterator[Any]:
    """exiv2 on a file's bytes, for reading: one part it cannot parse (a broken XMP packet, an odd
    EXIF value) is logged by exiv2 and skipped, so the other parts are still read."""
    with _EXIV2:
        pyexiv2.set_log_level(_MUTE)
        try:
            with pyexiv2.ImageData(data) as img:
                yield img
        finally:
            pyexiv2.set_log_level(_WRITE_LOG_LEVEL)


def _decoded(read: Any) -> Any:
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


def source_metadata(data: bytes) -> SourceMetadata:
    """The descriptive metadata of a scan's bytes; empty when it has none or exiv2 cannot read it.

    A scan whose metadata cannot be read still gets colorized, with our provenance alone (logged).
    """
    if not carries_metadata(data):
        return SourceMetadata()  # a JPEG with none: no need for exiv2 to parse the whole file
    try:
        with _reading(data) as img:
            xmp = _decoded(img.read_raw_xmp) if img.get_access_mode().get("xmp") else ""
            exif = _decoded(img.read_exif) if img.get_access_mode().get("exif") else {}
            iptc = _decoded(img.read_iptc) if img.get_access_mode().get("iptc") else {}
    except (RuntimeError, ValueError) as err:
        log.warning("scan metadata unreadable, not carried over: %s", err)
        return SourceMetadata()
    return SourceMetadata(
        xmp=xmp,
        exif={k: v for k, v in exif.items() if _keep_exif(k)},
        iptc={k: v for k, v in iptc.items() if k.startswith("Iptc.Application2.") and k not in _IPTC_DROP},
    )


# --- the XMP packet -------------------------------------------------------------------------------


def _parse_packet(packet: str) -> ET.Element | None:
    """The x:xmpmeta element of a packet (made when the packet starts at rdf:RDF), or None."""
    text = packet.strip().lstrip("\ufeff")
    if not text:
        return None
    try:
        root = SafeET.fromstring(text.encode("utf-8"))
    except (ET.ParseError, DefusedXmlException, ValueError) as err:
        log.warning("scan's XMP is not well-formed, not carried over: %s", err)
        return None
    if root.tag == _q("x", "xmpmeta") and root.find(_q("rdf", "RDF")) is not None:
        return root
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(f".//{_q('rdf', 'RDF')}")
    if rdf is None:
        return None
    meta = ET.Element(_q("x", "xmpmeta"))
    meta.append(rdf)
    return meta


def _descriptions(rdf: ET.Element) -> list[ET.Element]:
    return rdf.findall(_q("rdf", "Description"))


def _has(rdf: ET.Element, prefix: str, name: str) -> bool:
    tag = _q(prefix, name)
    return any(tag in d.attrib or d.find(tag) is not None for d in _descriptions(rdf))


def _values(rdf: ET.Element, prefix: str, name: str) -> list[ET.Element | str]:
    """A property's values in every rdf:Description (attribute or element form)."""
    tag, found = _q(prefix, name), []
    for desc in _descriptions(rdf):
        found += [desc.attrib[tag]] if tag in desc.attrib else []
        found += desc.findall(tag)
    return found


def _pop(rdf: ET.Element, prefix: str, name: str) -> list[ET.Element | str]:
    """Remove a property from every rdf:Description (element or attribute form); return its values."""
    tag, found = _q(prefix, name), []
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


def _text(values: list[ET.Element | str]) -> str:
    """The value of a simple property (text, or an rdf:resource URI)."""
    for value in values:
        if isinstance(value, str):
            return value.strip()
        text = (value.text or "").strip() or value.get(_q("rdf", "resource"), "")
        if text:
            return text
    return ""


def _lang_alt(values: list[ET.Element | str]) -> dict[str, str]:
    """A language alternative (dc:description) as {lang: text}; a plain string counts as x-default."""
    alts: dict[str, str] = {}
    for value in values:
        if isinstance(value, str) or value.find(f".//{_q('rdf', 'li')}") is None:
            if text := _text([value]):
                alts.setdefault("x-default", text)
            continue
        for li in value.iter(_q("rdf", "li")):
            alts.setdefault(li.get(XML_LANG, "x-default"), (li.text or "").strip())
    return alts


def combined_description(original: str, ours: str) -> str:
    """The scan's description with ours appended, so that any reader that shows one shows ours."""
    original = original.strip()
    if not original or ours in original:
        return original or ours
    return f"{original}\n\n{ours}"


def _simple(parent: ET.Element, prefix: str, name: str, value: str) -> None:
    if value:
        ET.SubElement(parent, _q(prefix, name)).text = value


def _add_description(desc: ET.Element, alts: dict[str, str], ours: str) -> None:
    alt = ET.SubElement(ET.SubElement(desc, _q("dc", "description")), _q("rdf", "Alt"))
    langs = ["x-default"] + sorted(lang for lang in alts if lang != "x-default")
    for lang in langs:
        li = ET.SubElement(alt, _q("rdf", "li"), {XML_LANG: lang})
        li.text = combined_description(alts.get(lang, ""), ours)


def _add_derived_from(desc: ET.Element, source_uri: str, document_id: str, instance_id: str) -> None:
    ref = ET.SubElement(desc, _q("xmpMM", "DerivedFrom"), {_q("rdf", "parseType"): "Resource"})
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
    meta = _parse_packet(source_xmp)
    if meta is None:
        meta = ET.Element(_q("x", "xmpmeta"))
        ET.SubElement(meta, _q("rdf", "RDF"))
    meta.set(_q("x", "xmptk"), info.creator_tool)
    rdf = meta.find(_q("rdf", "RDF"))
    assert rdf is not None
    old = {key: _pop(rdf, *key) for key in _REPLACED | _STALE}
    _drop_namespace(rdf, NS_COLORIZE)  # a colorized scan coloured again: its old claims are not ours
    about = next((d.get(_q("rdf", "about"), "") for d in _descriptions(rdf)), "")
    has_source, has_original = _has(rdf, "dc", "source"), _has(rdf, "xmpMM", "OriginalDocumentID")
    source_doc, source_instance = _text(old[("xmpMM", "DocumentID")]), _text(old[("xmpMM", "InstanceID")])

    desc = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): about})
    _simple(desc, "Iptc4xmpExt", "DigitalSourceType", DIGITAL_SOURCE_TYPE)
    _add_description(desc, _lang_alt(old[("dc", "description")]), info.description)
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
    _simple(desc, "colorize", "sourceDigitalSourceType", _text(old[("Iptc4xmpExt", "DigitalSourceType")]))
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


def _write(output: bytes, exif: dict[str, Any], iptc: dict[str, Any], packet: str) -> bytes:
    with _EXIV2, pyexiv2.ImageData(output) as img:
        img.modify_exif(exif)
        if iptc:
            img.modify_iptc(iptc)
        # exiv2 parses the packet into its XMP model and writes it back in the toolkit's canonical
        # form (one rdf:Description, simple properties as attributes): the same statements.
        img.modify_raw_xmp(packet)
        return img.get_bytes()


def embed(output: bytes, fmt: str, source: bytes | SourceMetadata, info: ProvenanceInfo) -> bytes:
    """The output's bytes with provenance and the scan's descriptive metadata embedded.

    Args:
        output: the encoded output (as :func:`colorize.imaging.encode_image` made it).
        fmt: its Pillow format name. ``BMP`` is returned unchanged: it has no place for metadata.
        source: the scan's bytes, or its :func:`source_metadata` read earlier.
        info: what to say.

    Raises:
        RuntimeError: exiv2 could not write the output (the caller records the file as failed:
            an output without provenance is never published).
    """
    if fmt in UNMARKED_FORMATS:
        return output
    meta = source if isinstance(source, SourceMetadata) else source_metadata(source)
    packet = provenance_xmp(info, meta.xmp)
    if fmt == "JPEG" and not meta.exif and not meta.iptc and (plain := _embed_plain_jpeg(output, info, packet)):
        return plain
    try:
        return _write(output, _output_exif(meta.exif, info, fmt), _output_iptc(meta.iptc, info, fmt), packet.decode())
    except (RuntimeError, ValueError) as err:
        # A scan's odd EXIF/IPTC value must not cost its output: write ours, with the scan's XMP.
        log.warning("scan's EXIF/IPTC not carried over: %s", err)
        return _write(output, _output_exif({}, info, fmt), {}, packet.decode())


def _embed_plain_jpeg(output: bytes, info: ProvenanceInfo, packet: bytes) -> bytes | None:
    """What :func:`_write` makes when there is no EXIF or IPTC to carry, as bytes without exiv2.

    The same EXIF tags and XMP statements; the packet as we serialise it rather than in exiv2's
    canonical form. None when it cannot be done so (see :mod:`colorize.jpeg_segments`).
    """
    tags = {_EXIF_TAG_IDS[key]: value for key, value in _output_exif({}, info, "JPEG").items()}
    exif, xmp = exif_segment(tags), xmp_segment(packet)
    return with_app1(output, [exif, xmp]) if exif and xmp else None


def provenance_kind(fmt: str, signed: bool) -> str:
    """The manifest's ``provenance`` value for an output format."""
    if fmt in UNMARKED_FORMATS:
        return NONE
    return XMP_C2PA if signed else XMP


# --- C2PA -----------------------------------------------------------------------------------------


def _c2pa() -> Any:
    try:
        import c2pa
    except ImportError as err:
        raise ProvenanceError(f"signing needs c2pa-python ({err}): pip install 'archive-colorize[c2pa]'") from None
    return c2pa


# Extended key usages a C2PA signing certificate may carry (C2PA 2.x, as c2pa-rs lists them):
# emailProtection, documentSigning, timeStamping, OCSPSigning, Microsoft's and C2PA's claim signing.
# The SDK's default accepts fewer (documentSigning and claim signing are refused by c2pa-python
# 0.38), so the list is given explicitly, for signing and for reading alike.
C2PA_EKUS = (
    "1.3.6.1.5.5.7.3.4", "1.3.6.1.5.5.7.3.36", "1.3.6.1.5.5.7.3.8", "1.3.6.1.5.5.7.3.9",
    "1.3.6.1.4.1.311.76.59.1.9", "1.3.6.1.4.1.62558.2.1",
)  # fmt: skip
# Offline and deterministic: no remote manifests, no OCSP, no thumbnails (a thumbnail of every
# output would cost a decode + encode for a picture the file already is).
_C2PA_SETTINGS: dict[str, Any] = {
    "builder": {"intent": "edit", "thumbnail": {"enabled": False}},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    "trust": {"trust_config": "\n".join(C2PA_EKUS)},
}


@dataclass(frozen=True)
class SigningKey:
    """A C2PA signing certificate chain (PEM, leaf first) and its private key (PEM)."""

    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    alg: str  # a c2pa.C2paSigningAlg name: ES256, ES384, ES512, PS256, ED25519


def _private_key(key_pem: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ProvenanceError("the signing key is encrypted: give an unencrypted PEM key (keep it secret)") from None
    except ValueError as err:
        raise ProvenanceError(f"the signing key is not a PEM private key: {err}") from None


def _signing_alg(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in algs:
            return algs[key.curve.name]
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ED25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        return "PS256"
    raise ProvenanceError(f"C2PA cannot sign with a {type(key).__name__} key: use EC P-256/384/521, Ed25519 or RSA")


def _check_certificate(chain_pem: bytes, key: Any) -> None:
    """Name the usual faults of a signing certificate plainly (the SDK says only "invalid").

    The leaf (first certificate of the chain) must belong to the key, be an end-entity certificate
    in its validity period, allow digitalSignature, and carry one of :data:`C2PA_EKUS`.
    """
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as err:
        raise ProvenanceError(f"the signing certificate is not a PEM certificate chain: {err}") from None
    raw = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ProvenanceError("the signing key does not belong to the first certificate of the chain (the leaf)")
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ProvenanceError(f"the signing certificate is not valid now (valid until {leaf.not_valid_after_utc})")
    problems = []
    basic = _extension(leaf, x509.BasicConstraints)
    if basic is not None and basic.ca:
        problems.append("it is a CA certificate; sign with an end-entity certificate issued by the CA")
    usage = _extension(leaf, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        problems.append("its key usage lacks digitalSignature")
    ekus = _extension(leaf, x509.ExtendedKeyUsage)
    if ekus is None or not {oid.dotted_string for oid in ekus} & set(C2PA_EKUS):
        problems.append("its extended key usage has none of emailProtection, documentSigning or C2PA claim signing")
    if problems:
        raise ProvenanceError("the signing certificate cannot sign C2PA manifests: " + "; ".join(problems))


def _extension(cert: Any, kind: type) -> Any:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def load_signing_key(cert_uri: str, key_uri: str, endpoint_url: str | None = None) -> SigningKey:
    """Read a certificate chain and key (paths or ``s3://`` URIs) and check that C2PA can sign with them.

    Raises:
        ProvenanceError: c2pa-python missing, a file missing, or a certificate C2PA refuses (no
            digitalSignature key usage, no accepted extended key usage, a key of another
            certificate, expired...), with the reason.
    """
    _c2pa()
    try:
        cert, key_pem = read_uri(cert_uri, endpoint_url), read_uri(key_uri, endpoint_url)
    except FileNotFoundError as err:
        raise ProvenanceError(f"signing certificate or key not found: {err}") from None
    key = _private_key(key_pem)
    _check_certificate(cert, key)
    signing = SigningKey(cert, key_pem, _signing_alg(key))
    _check_signing(signing)
    return signing


def _check_signing(key: SigningKey) -> None:
    """Sign a tiny image once, so that a bad certificate stops the run at its start, not per file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 100, 80)).save(buf, "PNG")
    info = ProvenanceInfo("check", "0" * 64, "check", "0" * 64, "check")
    try:
        sign_c2pa(buf.getvalue(), "PNG", info, key, source=buf.getvalue(), source_format="PNG", title="check.png")
    except Exception as err:  # noqa: BLE001 - the SDK's own error types; its message says what is wrong
        raise ProvenanceError(f"C2PA refuses to sign with this certificate and key: {err}") from None


def c2pa_manifest_definition(info: ProvenanceInfo, title: str) -> dict[str, Any]:
    """The manifest: a ``c2pa.edited`` action (the builder's ``edit`` intent adds ``c2pa.opened``
    of the parent first, as C2PA 2 requires) with the IPTC digital source type, and our fields."""
    agent = {"name": info.software, "version": info.software_version}
    action = {
        "action": "c2pa.edited",
        "digitalSourceType": DIGITAL_SOURCE_TYPE,
        "softwareAgent": agent,
        "description": info.description,
        "parameters": {"model_id": info.model_id, "model_sha256": info.model_sha256},
    }
    return {
        "claim_generator_info": [agent],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [action]}},
            {"label": C2PA_ASSERTION, "data": asdict(info)},
        ],
    }


def _ingredient(info: ProvenanceInfo, source_format: str) -> dict[str, Any]:
    # C2PA v3 ingredients hash only ingredients that have their own manifest: the scan's sha256 is
    # recorded in the ingredient's metadata so that it identifies the scan by content.
    return {
        "title": info.source_uri.rstrip("/").rpartition("/")[2] or info.source_uri,
        "relationship": "parentOf",
        "format": _C2PA_MIME.get(source_format, "application/octet-stream"),
        "metadata": {C2PA_ASSERTION: {"uri": info.source_uri, "sha256": info.source_sha256}},
    }


def sign_c2pa(
    output: bytes, fmt: str, info: ProvenanceInfo, key: SigningKey, *, source: bytes, source_format: str, title: str
) -> bytes:
    """The output with a signed C2PA manifest embedded (after :func:`embed`: it hashes the final bytes).

    The scan is added as the parent ingredient from its bytes, so a scan that has Content Credentials
    of its own (a signing scanner) keeps its chain.

    Raises:
        ProvenanceError: the format has no C2PA container (BMP), or c2pa-python is missing.
        c2pa.C2paError: the SDK could not sign.
    """
    c2pa = _c2pa()
    if fmt in UNMARKED_FORMATS:
        raise ProvenanceError(f"{fmt} cannot carry a C2PA manifest")
    signed = io.BytesIO()
    with c2pa.Context.from_dict(_C2PA_SETTINGS) as context:
        builder = c2pa.Builder(c2pa_manifest_definition(info, title), context=context)
        builder.add_ingredient(_ingredient(info, source_format), _C2PA_MIME[source_format], io.BytesIO(source))
        signer_info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg[key.alg], key.cert_chain, key.private_key, None)
        with c2pa.Signer.from_info(signer_info) as signer:
            builder.sign(signer, _C2PA_MIME[fmt], io.BytesIO(output), signed)
    return signed.getvalue()


# --- reading an output back -----------------------------------------------------------------------


def _sniff_format(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data)).format or ""
    except (UnidentifiedImageError, OSError, ValueError):
        return ""


_OUR_FIELDS = (
    ("sourceUri", "source_uri"), ("sourceSha256", "source_sha256"), ("modelId", "model_id"),
    ("modelSha256", "model_sha256"), ("software", "software"), ("softwareVersion", "software_version"),
    ("runId", "run_id"),
)  # fmt: skip


def _list_items(values: list[ET.Element | str]) -> str:
    """An XMP array (rdf:Seq or rdf:Bag, e.g. dc:creator) as one comma-separated string."""
    items = [li.text or "" for v in values if isinstance(v, ET.Element) for li in v.iter(_q("rdf", "li"))]
    return ", ".join(items) or _text(values)


def _xmp_fields(packet: str) -> dict[str, str]:
    """What we (and the scan's cataloguing) say in an XMP packet."""
    meta = _parse_packet(packet)
    rdf = meta.find(_q("rdf", "RDF")) if meta is not None else None
    if rdf is None:
        return {}
    refs = [e for e in _values(rdf, "xmpMM", "DerivedFrom") if isinstance(e, ET.Element)]
    paths: list[ET.Element | str] = [p for e in refs if (p := e.find(_q("stRef", "filePath"))) is not None]
    out = {
        "digital_source_type": _text(_values(rdf, "Iptc4xmpExt", "DigitalSourceType")),
        "description": _lang_alt(_values(rdf, "dc", "description")).get("x-default", ""),
        "creator_tool": _text(_values(rdf, "xmp", "CreatorTool")),
        "derived_from": _text(paths),
        "title": _lang_alt(_values(rdf, "dc", "title")).get("x-default", ""),
        "rights": _lang_alt(_values(rdf, "dc", "rights")).get("x-default", ""),
        "creator": _list_items(_values(rdf, "dc", "creator")),
    }
    for xmp_name, key in _OUR_FIELDS:
        out[key] = _text(_values(rdf, "colorize", xmp_name))
    return out


def _c2pa_summary(data: bytes, fmt: str, trust_anchors: str | None) -> dict[str, Any] | None:
    """The active C2PA manifest and its validation, or None when the file has none."""
    try:
        c2pa = _c2pa()
    except ProvenanceError as err:
        return {"state": "not checked", "error": str(err)}
    settings: dict[str, Any] = {"verify": _C2PA_SETTINGS["verify"], "trust": dict(_C2PA_SETTINGS["trust"])}
    if trust_anchors:
        settings["trust"]["user_anchors"] = trust_anchors
    mime = _C2PA_MIME.get(fmt)
    if mime is None or fmt in UNMARKED_FORMATS:
        return None
    try:
        with (
            c2pa.Context.from_dict(settings) as context,
            c2pa.Reader(mime, io.BytesIO(data), context=context) as reader,
        ):
            manifest = reader.get_active_manifest() or {}
            state = reader.get_validation_state() or ""
            results = reader.get_validation_results() or {}
    except c2pa.C2paError as err:
        if "ManifestNotFound" in type(err).__name__ or "ManifestNotFound" in str(err):
            return None
        return {"state": "Invalid", "error": str(err), "failures": [], "tampered": True}
    return _summarise(manifest, state, results)


def _summarise(manifest: dict[str, Any], state: str, results: dict[str, Any]) -> dict[str, Any]:
    failures = [f.get("code", "") for f in results.get("activeManifest", {}).get("failure", [])]
    actions = [
        a for assertion in manifest.get("assertions", []) if assertion.get("label", "").startswith("c2pa.actions")
        for a in assertion.get("data", {}).get("actions", [])
    ]  # fmt: skip
    ours = next((a["data"] for a in manifest.get("assertions", []) if a.get("label") == C2PA_ASSERTION), {})
    signature = manifest.get("signature_info", {})
    sources = [a.get("digitalSourceType", "") for a in actions if a.get("digitalSourceType")]
    ingredients = [
        {"title": i.get("title", ""), "relationship": i.get("relationship", "")}
        | i.get("metadata", {}).get(C2PA_ASSERTION, {})
        for i in manifest.get("ingredients", [])
    ]
    return {
        "state": state,
        "failures": failures,
        # a hash that no longer matches: bytes changed after signing (untrusted certificates are not tampering)
        "tampered": any("mismatch" in code for code in failures),
        "title": manifest.get("title", ""),
        "signer": ", ".join(v for v in (signature.get("common_name"), signature.get("issuer")) if v),
        "actions": [a.get("action", "") for a in actions],
        "digital_source_type": sources[0] if sources else "",
        "ingredients": ingredients,
        "assertion": ours,
    }


def read_provenance(data: bytes, trust_anchors: str | None = None) -> dict[str, Any]:
    """What a file says about itself: our XMP fields, EXIF's description, and its C2PA manifest.

    Args:
        data: the file's bytes.
        trust_anchors: PEM root certificates to trust when validating a C2PA signature (without
            them a valid signature by an unknown CA reads ``Valid``, and ``Trusted`` with them).

    Returns:
        ``format``, ``digital_source_type``, ``description``, ``source_uri``, ``source_sha256``,
        ``model_id``, ``model_sha256``, ``software``, ``software_version``, ``run_id``,
        ``creator_tool``, ``derived_from``, ``title``, ``creator``, ``rights``,
        ``exif_description``, and ``c2pa``: None, or the manifest summary with its validation
        ``state`` (``Valid``, ``Trusted``, ``Invalid``), ``failures`` and ``tampered``. Missing
        fields are "".
    """
    fmt = _sniff_format(data)
    xmp, exif = "", {}
    if fmt:
        try:
            with _reading(data) as img:
                xmp = _decoded(img.read_raw_xmp) if img.get_access_mode().get("xmp") else ""
                exif = _decoded(img.read_exif) if img.get_access_mode().get("exif") else {}
        except (RuntimeError, ValueError) as err:
            log.warning("metadata unreadable: %s", err)
    fields = _xmp_fields(xmp)
    out: dict[str, Any] = {"format": fmt, **{k: fields.get(k, "") for k in _READ_KEYS}}
    out["exif_description"] = str(exif.get("Exif.Image.ImageDescription", ""))
    out["c2pa"] = _c2pa_summary(data, fmt, trust_anchors) if fmt else None
    return out


_READ_KEYS = (
    "digital_source_type", "description", "source_uri", "source_sha256", "model_id", "model_sha256", "software",
    "software_version", "run_id", "creator_tool", "derived_from", "title", "creator", "rights",
)  # fmt: skip


def describe(report: dict[str, Any]) -> Iterator[str]:
    """Lines for a person: what :func:`read_provenance` found."""
    source_type = report["digital_source_type"]
    if not source_type and not report["source_uri"]:
        yield "provenance: none (the file does not say that archive-colorize made it)"
    else:
        machine = " (machine-coloured)" if source_type == DIGITAL_SOURCE_TYPE else ""
        yield f"digital source type: {source_type or '-'}{machine}"
    for label, key in (
        ("description", "description"), ("source", "source_uri"), ("source sha256", "source_sha256"),
        ("model", "model_id"), ("model sha256", "model_sha256"), ("software", "creator_tool"), ("run", "run_id"),
        ("title", "title"), ("creator", "creator"), ("rights", "rights"),
    ):  # fmt: skip
        if report.get(key):
            yield f"{label}: {report[key]}"
    yield from _describe_c2pa(report.get("c2pa"))


def _describe_c2pa(manifest: dict[str, Any] | None) -> Iterator[str]:
    if manifest is None:
        yield "C2PA: no manifest"
        return
    if manifest["state"] == "not checked":
        yield f"C2PA: not checked ({manifest.get('error', '')})"
        return
    tampered = " - TAMPERED: the file changed after it was signed" if manifest.get("tampered") else ""
    yield f"C2PA: {manifest['state']}{tampered}"
    if manifest.get("signer"):
        yield f"C2PA signer: {manifest['signer']}"
    if manifest.get("actions"):
        yield f"C2PA actions: {', '.join(manifest['actions'])}"
    for ingredient in manifest.get("ingredients", []):
        yield f"C2PA {ingredient.get('relationship') or 'ingredient'}: {ingredient.get('title', '')}"
        if ingredient.get("sha256"):
            yield f"C2PA {ingredient.get('relationship') or 'ingredient'} sha256: {ingredient['sha256']}"
    problems = manifest.get("failures") or ([manifest["error"]] if manifest.get("error") else [])
    if problems:
        yield f"C2PA problems: {', '.join(problems)}"
