"""Reading an output back: what its XMP and (when signed) its C2PA manifest say, for ``colorize inspect``."""

from __future__ import annotations

import io
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from colorize.c2pa_signing import C2PA_ASSERTION, C2PA_MIME, C2PA_SETTINGS, c2pa_module
from colorize.provenance import (
    DIGITAL_SOURCE_TYPE,
    UNMARKED_FORMATS,
    UNSIGNED_FORMATS,
    ProvenanceError,
    exiv2_decoded,
    exiv2_reading,
    lang_alt,
    parse_packet,
    qname,
    xmp_text,
    xmp_values,
)

log = logging.getLogger(__name__)


def _sniff_format(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data)).format or ""
    except (UnidentifiedImageError, OSError, ValueError):
        return ""


_OUR_FIELDS = (
    ("sourceUri", "source_uri"), ("sourceSha256", "source_sha256"), ("modelId", "model_id"),
    ("modelSha256", "model_sha256"), ("software", "software"), ("softwareVersion", "software_version"),
    ("runId", "run_id"), ("colourMethod", "colour_method"),
)  # fmt: skip


def _list_items(values: list[ET.Element | str]) -> str:
    """An XMP array (rdf:Seq or rdf:Bag, e.g. dc:creator) as one comma-separated string."""
    items = [li.text or "" for v in values if isinstance(v, ET.Element) for li in v.iter(qname("rdf", "li"))]
    return ", ".join(items) or xmp_text(values)


def _file_path(ref: ET.Element) -> ET.Element | str | None:
    """A resource's ``stRef:filePath``: a child element as we write it, an attribute as exiv2 rewrites
    it, either inside an ``rdf:Description`` as Adobe's tools write it."""
    for node in (ref, ref.find(qname("rdf", "Description"))):
        if node is None:
            continue
        child = node.find(qname("stRef", "filePath"))
        if child is not None:
            return child
        if (attribute := node.get(qname("stRef", "filePath"))) is not None:
            return attribute
    return None


def _xmp_fields(packet: str) -> dict[str, str]:
    """What we (and the scan's cataloguing) say in an XMP packet."""
    meta = parse_packet(packet)
    rdf = meta.find(qname("rdf", "RDF")) if meta is not None else None
    if rdf is None:
        return {}
    refs = [e for e in xmp_values(rdf, "xmpMM", "DerivedFrom") if isinstance(e, ET.Element)]
    paths: list[ET.Element | str] = [p for e in refs if (p := _file_path(e)) is not None]
    out = {
        "digital_source_type": xmp_text(xmp_values(rdf, "Iptc4xmpExt", "DigitalSourceType")),
        "description": lang_alt(xmp_values(rdf, "dc", "description")).get("x-default", ""),
        "creator_tool": xmp_text(xmp_values(rdf, "xmp", "CreatorTool")),
        "derived_from": xmp_text(paths),
        "title": lang_alt(xmp_values(rdf, "dc", "title")).get("x-default", ""),
        "rights": lang_alt(xmp_values(rdf, "dc", "rights")).get("x-default", ""),
        "creator": _list_items(xmp_values(rdf, "dc", "creator")),
    }
    for xmp_name, key in _OUR_FIELDS:
        out[key] = xmp_text(xmp_values(rdf, "colorize", xmp_name))
    return out


def _c2pa_summary(data: bytes, fmt: str, trust_anchors: str | None) -> dict[str, Any] | None:
    """The active C2PA manifest and its validation, or None when the file has none."""
    try:
        c2pa = c2pa_module()
    except ProvenanceError as err:
        return {"state": "not checked", "error": str(err)}
    settings: dict[str, Any] = {"verify": C2PA_SETTINGS["verify"], "trust": dict(C2PA_SETTINGS["trust"])}
    if trust_anchors:
        settings["trust"]["user_anchors"] = trust_anchors
    mime = C2PA_MIME.get(fmt)
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
        ``colour_method``, ``creator_tool``, ``derived_from``, ``title``, ``creator``, ``rights``,
        ``exif_description``, and ``c2pa``: None, or the manifest summary with its validation
        ``state`` (``Valid``, ``Trusted``, ``Invalid``), ``failures`` and ``tampered``. Missing
        fields are "".
    """
    fmt = _sniff_format(data)
    xmp, exif = _metadata(data, with_exif=True) if fmt else ("", {})
    fields = _xmp_fields(xmp)
    out: dict[str, Any] = {"format": fmt, **{k: fields.get(k, "") for k in _READ_KEYS}}
    out["exif_description"] = str(exif.get("Exif.Image.ImageDescription", ""))
    out["c2pa"] = _c2pa_summary(data, fmt, trust_anchors) if fmt else None
    return out


_READ_KEYS = (
    "digital_source_type", "description", "source_uri", "source_sha256", "model_id", "model_sha256", "software",
    "software_version", "run_id", "colour_method", "creator_tool", "derived_from", "title", "creator", "rights",
)  # fmt: skip


def recorded_in(data: bytes) -> dict[str, str]:
    """What an output's XMP says made it (``source_sha256``, ``model_sha256``, ``run_id``,
    ``colour_method``, ...); {} for a file without our XMP. XMP alone: no C2PA check, no EXIF."""
    return _xmp_fields(_metadata(data, with_exif=False)[0])


def _metadata(data: bytes, with_exif: bool) -> tuple[str, dict[str, Any]]:
    """A file's XMP packet ("" when none) and, when asked, its EXIF ({} when none or unreadable)."""
    xmp, exif = "", {}
    try:
        with exiv2_reading(data) as img:
            xmp = exiv2_decoded(img.read_raw_xmp) if img.get_access_mode().get("xmp") else ""
            if with_exif:
                exif = exiv2_decoded(img.read_exif) if img.get_access_mode().get("exif") else {}
    except (RuntimeError, ValueError) as err:
        log.warning("metadata unreadable: %s", err)
    return xmp, exif


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
        ("colour method", "colour_method"),
        ("title", "title"), ("creator", "creator"), ("rights", "rights"),
    ):  # fmt: skip
        if report.get(key):
            yield f"{label}: {report[key]}"
    yield from _describe_c2pa(report.get("c2pa"), report.get("format", ""))


def _describe_c2pa(manifest: dict[str, Any] | None, fmt: str) -> Iterator[str]:
    if manifest is None and fmt in UNSIGNED_FORMATS:
        yield f"C2PA: none (the format, {fmt}, has no C2PA binding)"
        return
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
