"""Provenance (issue 10): every output says, inside the file, that it is machine-coloured, from which
scan, by which model; the scan's own metadata survives; signed outputs carry C2PA Content Credentials.

Outputs are written by exiv2 (pyexiv2) and c2pa-rs; they are read back here with Pillow and the
standard library's ElementTree wherever possible, so that one library does not vouch for itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import c2pa
import cv2
import imagecodecs
import numpy as np
import pandas as pd
import pyexiv2
import pytest
from PIL import Image, IptcImagePlugin
from typer.testing import CliRunner

from bench.provenance_cost import measure, scanner_file, throwaway_chain
from colorize import __version__, provenance
from colorize.c2pa_signing import load_signing_key, sign_c2pa
from colorize.cli import app
from colorize.detect import detect_colour
from colorize.icc import SRGB_PROFILE
from colorize.imaging import decode_rgb
from colorize.jpeg_segments import carries_metadata
from colorize.manifest import COLUMNS, ManifestRow, read_csv, to_frame, write_csv
from colorize.plan import RunOptions
from colorize.provenance import (
    DIGITAL_SOURCE_TYPE,
    NS,
    ProvenanceError,
    ProvenanceInfo,
    embed,
    provenance_xmp,
    source_metadata,
)
from colorize.provenance_read import read_provenance
from colorize.storage import open_storage
from tests.helpers import encode, gray_image, write

RDF, XML_LANG = NS["rdf"], "{http://www.w3.org/XML/1998/namespace}lang"
SOURCE_TITLE, SOURCE_CREATOR, SOURCE_RIGHTS = "Harbour at dawn, 1921", "A. Photographer", "CC BY 4.0, City Archive"
SOURCE_DESCRIPTION = "Fishing boats in the harbour"
OUTPUTS = ["cat/harbour.jpg", "b.png", "c8.tif", "c16.tif", "d.webp", "f.jp2"]  # every format that carries XMP
SIGNED = [key for key in OUTPUTS if not key.endswith(".jp2")]  # C2PA has no JPEG 2000 binding
# The JP2 'uuid' boxes exiv2 writes: XMP (the XMP specification's) and EXIF (exiv2's, read by others).
JP2_XMP_UUID, JP2_EXIF_UUID = bytes.fromhex("be7acfcb97a942e89c71999491e3afac"), b"JpgTiffExif->JP2"


# --- making files ---------------------------------------------------------------------------------


def _source_xmp() -> bytes:
    """A cataloguing packet as an archive's DAM writes it: title, creator, rights, a description."""
    meta = ET.Element(f"{{{NS['x']}}}xmpmeta")
    desc = ET.SubElement(ET.SubElement(meta, f"{{{RDF}}}RDF"), f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""})
    desc.set(f"{{{NS['tiff']}}}Orientation", "1")  # about the scan's pixels: must not reach the output
    for name, text in (("title", SOURCE_TITLE), ("rights", SOURCE_RIGHTS), ("description", SOURCE_DESCRIPTION)):
        alt = ET.SubElement(ET.SubElement(desc, f"{{{NS['dc']}}}{name}"), f"{{{RDF}}}Alt")
        ET.SubElement(alt, f"{{{RDF}}}li", {XML_LANG: "x-default"}).text = text
    seq = ET.SubElement(ET.SubElement(desc, f"{{{NS['dc']}}}creator"), f"{{{RDF}}}Seq")
    ET.SubElement(seq, f"{{{RDF}}}li").text = SOURCE_CREATOR
    return ET.tostring(meta, encoding="utf-8")


def _catalogued_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x013B], exif[0x8298], exif[0x010E] = SOURCE_CREATOR, SOURCE_RIGHTS, SOURCE_DESCRIPTION
    return encode(gray_image(120, 160), "JPEG", quality=92, dpi=(300, 300), exif=exif, xmp=_source_xmp())


def _scans(root: Path) -> Path:
    write(root / "cat/harbour.jpg", _catalogued_jpeg())
    # A scanner's gray profile: applied on reading, and not carried (the output's pixels are sRGB).
    write(
        root / "b.png",
        encode(gray_image(90, 70, seed=1), "PNG", icc_profile=imagecodecs.cms_profile("gray", gamma=2.2)),
    )
    write(root / "c8.tif", encode(gray_image(80, 100, seed=2), "TIFF"))
    write(root / "c16.tif", encode(gray_image(80, 100, seed=3, dtype=np.uint16), "TIFF"))
    write(root / "d.webp", encode(gray_image(64, 96, seed=4), "WEBP", quality=90))
    write(root / "e.bmp", encode(gray_image(50, 60, seed=5), "BMP"))
    write(root / "f.jp2", encode(gray_image(72, 88, seed=6), "JPEG2000"))
    return root


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway chain: a root CA, a good leaf, and a leaf without an extended key usage."""
    return throwaway_chain(tmp_path_factory.mktemp("certs"))


# --- reading files back (Pillow + ElementTree, not exiv2) -----------------------------------------


def _jp2_uuid_box(data: bytes, uuid: bytes) -> bytes | None:
    """The payload of a top-level JP2 ``uuid`` box (ISO 15444-1 I.7.2): Pillow reads none of them."""
    at = 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        head = 8
        if size == 1:  # a 64-bit length follows
            size, head = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        end = len(data) if size == 0 else at + size
        if kind == b"uuid" and data[at + head : at + head + 16] == uuid:
            return data[at + head + 16 : end]
        at = end
    return None


def _exif(path: Path) -> Image.Exif:
    img = Image.open(path)
    if img.format != "JPEG2000":
        return img.getexif()
    exif = Image.Exif()
    exif.load(_jp2_uuid_box(path.read_bytes(), JP2_EXIF_UUID) or b"")
    return exif


def _packet(path: Path) -> bytes:
    img = Image.open(path)
    packet = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if packet is None and img.format == "JPEG2000":
        packet = _jp2_uuid_box(path.read_bytes(), JP2_XMP_UUID)
    if packet is None and img.format == "TIFF":
        packet = img.tag_v2.get(700)
    assert packet, f"{path.name}: no XMP packet"
    return packet.encode() if isinstance(packet, str) else bytes(packet)


def _xmp(path: Path) -> dict[str, str | list[str]]:
    """Every property of a packet: ``prefix:name`` -> text, or the rdf:li texts of an array."""
    prefixes = {uri: prefix for prefix, uri in NS.items()}
    props: dict[str, str | list[str]] = {}
    for desc in ET.fromstring(_packet(path)).iter(f"{{{RDF}}}Description"):
        items = [*desc.attrib.items(), *((c.tag, c) for c in desc)]
        for tag, value in items:
            uri, _, name = tag[1:].partition("}")
            key = f"{prefixes.get(uri, uri)}:{name}"
            if isinstance(value, str):
                props[key] = value
            elif value.find(f".//{{{RDF}}}li") is not None:
                props[key] = [li.text or "" for li in value.iter(f"{{{RDF}}}li")]
            elif len(value) or value.attrib:  # a struct (xmpMM:DerivedFrom), in element or attribute form
                fields = {k: v for k, v in value.attrib.items() if k != f"{{{RDF}}}parseType"}
                fields.update({c.tag: c.text or "" for c in value})
                props.update({f"{key}/{k.partition('}')[2]}": v for k, v in fields.items()})
            else:
                props[key] = value.text or ""
    return props


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(dest: Path, run_id: str) -> dict[str, pd.Series]:
    frame = pd.read_csv(dest / f"manifests/{run_id}.csv", dtype=str, keep_default_na=False)
    return {r.source_uri.split("/scans/", 1)[-1].rsplit("/colour/", 1)[-1]: r for r in frame.itertuples()}


def _card(model: Path) -> dict:
    return json.loads((model / "card.json").read_text())


@pytest.fixture(scope="module")
def marked(prefect_api_url, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """One run over every output format, unsigned."""
    from flows.colorize_archive import colorize_archive

    root = tmp_path_factory.mktemp("marked")
    src, dest = _scans(root / "scans"), root / "colour"
    summary = colorize_archive(source=str(src), dest=str(dest), model=str(tiny_model), batch_size=4)
    return src, dest, summary


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", OUTPUTS)
def test_every_format_says_it_is_machine_coloured_from_which_scan_by_which_model(marked, tiny_model, key):
    src, dest, summary = marked
    card, out = _card(tiny_model), dest / key
    xmp = _xmp(out)
    ours = f"Colorized automatically by archive-colorize {__version__} with model {card['model_id']}"
    assert xmp["Iptc4xmpExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert ours in xmp["dc:description"][0] and "a machine's guess, not a record" in xmp["dc:description"][0]
    assert xmp["colorize:sourceUri"] == xmp["xmpMM:DerivedFrom/filePath"] == str(src / key)
    assert xmp["colorize:sourceSha256"] == _sha(src / key)
    assert (xmp["colorize:modelId"], xmp["colorize:modelSha256"]) == (card["model_id"], card["sha256"])
    assert (xmp["colorize:software"], xmp["colorize:softwareVersion"]) == ("archive-colorize", __version__)
    assert xmp["xmp:CreatorTool"] == f"archive-colorize {__version__}"
    assert xmp["colorize:runId"] == summary.run_id and xmp["xmpMM:DocumentID"].startswith("xmp.did:")
    said = read_provenance(out.read_bytes())  # what `colorize inspect` shows, however exiv2 laid the XMP out
    assert said["derived_from"] == said["source_uri"] == str(src / key) and said["run_id"] == summary.run_id
    assert ours in _exif(out)[0x010E]  # EXIF ImageDescription, read by Pillow
    if key.endswith(".jp2"):  # its colour specification box names sRGB (method 1, EnumCS 16)
        at = out.read_bytes().index(b"colr")
        assert out.read_bytes()[at + 4 : at + 11] == b"\x01\x00\x00\x00\x00\x00\x10"
    else:  # sRGB's ICC profile, for colour-managed software
        assert Image.open(out).info["icc_profile"] == SRGB_PROFILE

    row = _rows(dest, summary.run_id)[key]
    assert (row.provenance, row.model_sha256) == ("xmp", card["sha256"])
    assert row.output_sha256 == _sha(out)  # the manifest hashes the file as written, metadata included


def test_pillows_own_xmp_reader_and_16_bit_tiff_kept(marked):
    _, dest, _ = marked
    xmp = Image.open(dest / "cat/harbour.jpg").getxmp()  # Pillow's parser (defusedxml)
    descriptions = xmp["xmpmeta"]["RDF"]["Description"]
    descriptions = descriptions if isinstance(descriptions, list) else [descriptions]
    assert DIGITAL_SOURCE_TYPE in [d.get("DigitalSourceType") for d in descriptions]
    deep = cv2.imdecode(np.fromfile(dest / "c16.tif", np.uint8), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (80, 100, 3)  # exiv2 rewrote the TIFF, not its pixels


def test_bmp_carries_nothing_and_says_so(marked):
    _, dest, summary = marked
    img = Image.open(dest / "e.bmp")
    assert "xmp" not in img.info and not img.getexif()
    assert _rows(dest, summary.run_id)["e.bmp"].provenance == "none"


def test_the_scans_own_metadata_survives_beside_ours(marked):
    _, dest, _ = marked
    out = dest / "cat/harbour.jpg"
    xmp, exif, img = _xmp(out), Image.open(out).getexif(), Image.open(out)
    assert (xmp["dc:title"], xmp["dc:creator"], xmp["dc:rights"]) == ([SOURCE_TITLE], [SOURCE_CREATOR], [SOURCE_RIGHTS])
    assert xmp["dc:description"][0].startswith(SOURCE_DESCRIPTION + "\n\nColorized automatically")
    assert "tiff:Orientation" not in xmp  # it described the scan's pixels
    assert (exif[0x013B], exif[0x8298]) == (SOURCE_CREATOR, SOURCE_RIGHTS)  # Artist, Copyright
    assert exif[0x010E].startswith(SOURCE_DESCRIPTION + "\n\nColorized automatically")
    assert exif[0x0131] == f"archive-colorize {__version__}"  # Software
    assert tuple(round(v) for v in img.info["dpi"]) == (300, 300)


def test_reruns_carry_provenance_and_outputs_are_refused_as_sources(marked, tiny_model, tmp_path):
    from flows.colorize_archive import colorize_archive

    src, dest, _ = marked
    again = colorize_archive(source=str(src), dest=str(dest), model=str(tiny_model))
    assert again.counts == {"skipped_done": 7}
    rows = _rows(dest, again.run_id)
    assert rows["b.png"].provenance == "xmp" and rows["e.bmp"].provenance == "none"
    assert {r.model_sha256 for r in rows.values()} == {_card(tiny_model)["sha256"]}

    round_trip = colorize_archive(source=str(dest), dest=str(tmp_path / "twice"), model=str(tiny_model))
    outputs = _rows(tmp_path / "twice", round_trip.run_id)
    said = {k: r for k, r in outputs.items() if not k.endswith(".bmp")}
    assert {r.status for r in said.values()} == {"skipped_color"}  # colour, and saying so: never coloured twice
    assert all("its metadata says archive-colorize made it" in r.reason for r in said.values())
    # A BMP carries no metadata: only its colour can tell, and this random model's chroma is faint
    # (mostly under the detector's floor once smoothed), so the run must simply agree with the detector.
    bmp_is_colour = detect_colour(decode_rgb((dest / "e.bmp").read_bytes())).is_colour
    assert outputs["e.bmp"].status == ("skipped_color" if bmp_is_colour else "colorized")


def test_metadata_an_output_cannot_hold_is_named_in_its_row(prefect_api_url, tiny_model, tmp_path):
    from flows.colorize_archive import colorize_archive

    exif = Image.Exif()
    exif[0x013B] = "A. Photographer; " * 4500  # 76 kB: more than a JPEG's EXIF segment holds
    exif[0x8298] = SOURCE_RIGHTS
    src, dest = tmp_path / "scans", tmp_path / "colour"
    write(src / "long.tif", encode(gray_image(60, 80), "TIFF", exif=exif))
    summary = colorize_archive(source=str(src), dest=str(dest), model=str(tiny_model), output_format="jpeg")
    row = _rows(dest, summary.run_id)["long.tif"]
    assert row.status == "colorized"
    assert row.reason == "not in the output, as the JPEG file could not hold it: the scan's Exif.Image.Artist"
    out = Image.open(dest / "long.jpg").getexif()
    assert out[0x8298] == SOURCE_RIGHTS and 0x013B not in out  # the rest was carried over


def test_manifest_columns_are_appended_and_older_manifests_read(tmp_path):
    assert COLUMNS[-4:] == ["provenance", "model_sha256", "colour_method", "output_size"]
    row = ManifestRow(run_id="r", source_uri="a.jpg", source_size=1, source_mtime="t", status="colorized")
    older = to_frame([row]).drop(columns=COLUMNS[-4:])  # a manifest from before issue 10
    storage = open_storage(str(tmp_path))
    write_csv(storage, "old.csv", older)
    frame = read_csv(storage, "old.csv")
    assert list(frame.columns) == COLUMNS and tuple(frame.loc[0, COLUMNS[-4:]]) == ("", "", "", 0)


def test_provenance_xmp_merges_languages_and_drops_stale_claims():
    info = ProvenanceInfo("s3://b/scans/a.tif", "ab" * 32, "m@cd", "cd" * 32, "run-2")
    earlier = provenance_xmp(ProvenanceInfo("old", "00" * 32, "old@00", "00" * 32, "run-1")).decode()
    merged = ET.fromstring(provenance_xmp(info, earlier).decode().split("\n", 1)[1].rsplit("\n", 1)[0])
    texts = [e.text for e in merged.iter(f"{{{NS['colorize']}}}runId")]
    assert texts == ["run-2"]  # a coloured file coloured again: the earlier claims are replaced

    packet = (
        _source_xmp()
        .decode()
        .replace(
            f'<rdf:li xml:lang="x-default">{SOURCE_DESCRIPTION}</rdf:li>',
            f'<rdf:li xml:lang="x-default">{SOURCE_DESCRIPTION}</rdf:li><rdf:li xml:lang="de">Boote</rdf:li>',
        )
    )
    root = ET.fromstring(provenance_xmp(info, packet).decode().split("\n", 1)[1].rsplit("\n", 1)[0])
    langs = {li.get(XML_LANG): li.text for li in root.iter(f"{{{RDF}}}li") if li.get(XML_LANG) in ("x-default", "de")}
    assert langs["de"].startswith("Boote\n\nColorized automatically")
    assert langs["x-default"].startswith(SOURCE_DESCRIPTION + "\n\nColorized automatically")


def test_iptc_is_kept_in_step_and_a_broken_xmp_costs_only_itself():
    info = ProvenanceInfo("/scans/a.jpg", "ab" * 32, "m@cd", "cd" * 32, "run")
    output = encode(np.zeros((40, 50, 3), np.uint8), "JPEG")
    with pyexiv2.ImageData(encode(gray_image(40, 50), "JPEG")) as img:  # IPTC-IIM (UTF-8), as older DAMs write it
        img.modify_iptc({"Iptc.Envelope.CharacterSet": "\x1b%G", "Iptc.Application2.Caption": "Hafen im Frühjahr"})
        scan = img.get_bytes()
    out = Image.open(io.BytesIO(embed(output, "JPEG", scan, info)))
    caption = IptcImagePlugin.getiptcinfo(out)[(2, 120)].decode("utf-8")  # read by Pillow
    assert caption == "Hafen im Frühjahr\n\n" + info.description

    exif = Image.Exif()
    exif[0x013B] = SOURCE_CREATOR
    scan = encode(gray_image(40, 50), "JPEG", exif=exif, xmp=b"<x:xmpmeta><not-closed")
    out = Image.open(io.BytesIO(embed(output, "JPEG", scan, info)))
    assert out.getexif()[0x013B] == SOURCE_CREATOR  # the scan's EXIF survives its broken XMP
    assert DIGITAL_SOURCE_TYPE in out.info["xmp"].decode()


def test_signed_outputs_validate_and_tampering_is_reported(prefect_api_url, certs, tiny_model, tmp_path):
    src, dest = _scans(tmp_path / "scans"), tmp_path / "colour"
    runner = CliRunner()
    refused = runner.invoke(app, ["run", str(src), str(tmp_path / "no"), "--model", str(tiny_model), "--sign-with",
                                  str(certs["no_eku"]), str(certs["key"])])  # fmt: skip
    assert refused.exit_code == 1 and "extended key usage" in refused.output
    assert not (tmp_path / "no" / "b.png").exists()  # refused at the start, not file by file
    done = runner.invoke(app, ["run", str(src), str(dest), "--model", str(tiny_model), "--sign-with",
                               str(certs["chain"]), str(certs["key"])])  # fmt: skip
    assert done.exit_code == 0, done.output
    (run_manifest,) = (dest / "manifests").glob("*.csv")
    run_id = run_manifest.stem
    rows = _rows(dest, run_id)
    trust = {"trust": {"user_anchors": certs["root"].read_text()}, "verify": {"remote_manifest_fetch": False}}

    jp2 = dest / "f.jp2"
    assert rows["f.jp2"].provenance == "xmp" and _xmp(jp2)["Iptc4xmpExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE
    for key in SIGNED:
        out = dest / key
        assert rows[key].provenance == "xmp+c2pa" and rows[key].output_sha256 == _sha(out)
        assert _xmp(out)["Iptc4xmpExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE  # XMP kept through signing
        assert Image.open(out).info["icc_profile"] == SRGB_PROFILE  # and the profile
        mime = Image.MIME[Image.open(out).format]
        with c2pa.Context.from_dict(trust) as ctx, c2pa.Reader(mime, io.BytesIO(out.read_bytes()), context=ctx) as r:
            state, manifest, results = r.get_validation_state(), r.get_active_manifest(), r.get_validation_results()
        assert state == "Trusted", results
        codes = [s["code"] for s in results["activeManifest"]["success"]]
        assert "claimSignature.validated" in codes and any(c.endswith("Hash.match") for c in codes), codes
        actions = next(a["data"]["actions"] for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
        edited = next(a for a in actions if a["action"] == "c2pa.edited")
        assert edited["digitalSourceType"] == DIGITAL_SOURCE_TYPE
        (parent,) = manifest["ingredients"]
        assert parent["relationship"] == "parentOf"
        assert parent["metadata"]["example.archive-colorize.provenance"]["sha256"] == _sha(src / key)
    assert rows["e.bmp"].provenance == "none"

    shown = runner.invoke(app, ["inspect", str(dest / "cat/harbour.jpg"), "--trust", str(certs["root"])])
    assert shown.exit_code == 0, shown.output
    assert "C2PA: Trusted" in shown.output and _sha(src / "cat/harbour.jpg") in shown.output
    assert "(machine-coloured)" in shown.output and "c2pa.edited" in shown.output

    data = bytearray((dest / "cat/harbour.jpg").read_bytes())
    scan_start = data.rfind(b"\xff\xda")  # start of scan: entropy-coded image data follows
    data[scan_start + 40 : scan_start + 48] = bytes(b ^ 0x5A for b in data[scan_start + 40 : scan_start + 48])
    tampered = write(tmp_path / "tampered.jpg", bytes(data))
    with c2pa.Reader("image/jpeg", io.BytesIO(bytes(data))) as reader:
        failures = [f["code"] for f in reader.get_validation_results()["activeManifest"]["failure"]]
        assert reader.get_validation_state() == "Invalid" and "assertion.dataHash.mismatch" in failures
    flagged = runner.invoke(app, ["inspect", str(tampered)])
    assert flagged.exit_code == 3 and "TAMPERED" in flagged.output

    plain = runner.invoke(app, ["inspect", str(src / "b.png")])
    assert plain.exit_code == 0 and "provenance: none" in plain.output and "C2PA: no manifest" in plain.output
    unsignable = runner.invoke(app, ["inspect", str(dest / "f.jp2")])
    assert unsignable.exit_code == 0 and "(machine-coloured)" in unsignable.output
    assert "C2PA: none (the format, JPEG2000, has no C2PA binding)" in unsignable.output


def test_a_jpeg_2000_scan_is_named_as_the_signed_outputs_parent_by_uri_and_hash(certs):
    key = load_signing_key(str(certs["chain"]), str(certs["key"]))
    scan = encode(gray_image(40, 50), "JPEG2000")
    sha = hashlib.sha256(scan).hexdigest()
    info = ProvenanceInfo("s3://b/scans/a.jp2", sha, "m@cd", "cd" * 32, "run-1")
    output = embed(encode(gray_image(40, 50), "PNG"), "PNG", scan, info)
    signed = sign_c2pa(output, "PNG", info, key, source=scan, source_format="JPEG2000", title="a.png")
    trust = {"trust": {"user_anchors": certs["root"].read_text()}, "verify": {"remote_manifest_fetch": False}}
    with c2pa.Context.from_dict(trust) as ctx, c2pa.Reader("image/png", io.BytesIO(signed), context=ctx) as r:
        state, manifest = r.get_validation_state(), r.get_active_manifest()
    assert state == "Trusted"
    (parent,) = manifest["ingredients"]
    assert (parent["title"], parent["format"], parent["relationship"]) == ("a.jp2", "image/jp2", "parentOf")
    assert parent["metadata"]["example.archive-colorize.provenance"] == {"uri": info.source_uri, "sha256": sha}
    with pytest.raises(ProvenanceError, match="JPEG2000 cannot carry a C2PA manifest"):
        sign_c2pa(embed(scan, "JPEG2000", scan, info), "JPEG2000", info, key, source=scan, source_format="JPEG2000",
                  title="a.jp2")  # fmt: skip


def test_a_certificate_c2pa_refuses_is_named(certs):
    with pytest.raises(ProvenanceError, match="extended key usage"):
        load_signing_key(str(certs["no_eku"]), str(certs["key"]))
    with pytest.raises(ProvenanceError, match="does not belong"):
        load_signing_key(str(certs["root"]), str(certs["key"]))
    with pytest.raises(ProvenanceError, match="not found"):
        load_signing_key(str(certs["chain"]), str(certs["key"]) + ".missing")
    with pytest.raises(ValueError, match="both"):
        RunOptions(run_id="r", source="s", dest="d", model="m", model_id="m", sign_cert=str(certs["chain"]))


def test_plain_jpegs_are_marked_as_bytes_saying_what_exiv2_would():
    """Scans and outputs without metadata skip exiv2 (issue 7's GPU runs); nothing they say changes."""
    info = ProvenanceInfo("/scans/a.jpg", "ab" * 32, "m@cd", "cd" * 32, "run")
    scan, output = encode(gray_image(40, 50), "JPEG"), encode(gray_image(40, 50, seed=1), "JPEG", dpi=(300, 300))
    assert not carries_metadata(scan) and not carries_metadata(output)
    assert carries_metadata(_catalogued_jpeg()) and carries_metadata(encode(gray_image(40, 50), "TIFF"))
    assert carries_metadata(scan[:100])  # not a JPEG that parses: exiv2 reads it and says what it finds

    quick = embed(output, "JPEG", scan, info)
    exif = provenance._output_exif({}, info, "JPEG")
    by_exiv2 = provenance._write(output, "JPEG", exif, {}, provenance_xmp(info).decode())
    assert quick != by_exiv2 and quick[-(len(output) - 20) :] == output[20:]  # segments added, the rest untouched
    assert read_provenance(quick) == read_provenance(by_exiv2)
    with pyexiv2.ImageData(quick) as img:  # exiv2 reads what we wrote
        exif, xmp, profile = img.read_exif(), img.read_xmp(), img.read_icc()
    assert profile == SRGB_PROFILE == Image.open(io.BytesIO(by_exiv2)).info["icc_profile"]
    assert exif["Exif.Image.ImageDescription"] == info.description
    assert exif["Exif.Image.Software"] == info.creator_tool
    assert xmp["Xmp.colorize.sourceSha256"] == "ab" * 32
    assert xmp["Xmp.xmpMM.DerivedFrom/stRef:filePath"] == "/scans/a.jpg"
    img = Image.open(io.BytesIO(quick))
    assert tuple(round(v) for v in img.info["dpi"]) == (300, 300)
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(output))))

    # What bytes cannot say as exiv2 would goes to exiv2: UTF-8 in EXIF, an output already marked.
    accented = ProvenanceInfo("/scans/a.jpg", "ab" * 32, "modèle@cd", "cd" * 32, "run")
    with pyexiv2.ImageData(embed(output, "JPEG", scan, accented)) as img:
        assert "modèle@cd" in img.read_exif()["Exif.Image.ImageDescription"]
    twice = embed(quick, "JPEG", scan, accented)
    assert read_provenance(twice)["model_id"] == "modèle@cd" and twice.count(b"Exif\x00\x00") == 1


def test_the_provenance_cost_benchmark_measures_a_scan_that_carries_metadata(certs):
    scan = scanner_file("JPEG")
    assert "Harbour, 1921" in source_metadata(scan).xmp  # the read step has something to read
    result = measure("JPEG", 1, certs)
    assert min(result[f"{step}_ms"] for step in ("base", "read", "embed", "sign")) > 0
    assert result["embed_added_bytes"] > 1000 and result["sign_added_bytes"] > 1000


def _two_subjects_xmp(filler: int = 0) -> bytes:
    """A packet the XMP toolkit rejects as it is: two descriptions naming different subjects."""
    meta = ET.Element(f"{{{NS['x']}}}xmpmeta")
    rdf = ET.SubElement(meta, f"{{{RDF}}}RDF")
    first = ET.SubElement(rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": "uuid:one"})
    first.set(f"{{{NS['dc']}}}format", "image/jpeg")
    second = ET.SubElement(rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": "uuid:two"})
    alt = ET.SubElement(ET.SubElement(second, f"{{{NS['dc']}}}rights"), f"{{{RDF}}}Alt")
    ET.SubElement(alt, f"{{{RDF}}}li", {XML_LANG: "x-default"}).text = SOURCE_RIGHTS + " " + "x" * filler
    return ET.tostring(meta, encoding="utf-8")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_scans_xmp_the_toolkit_rejects_or_a_jpeg_cannot_hold_never_costs_the_output(fmt):
    info = ProvenanceInfo("/scans/a.jpg", "ab" * 32, "m@cd", "cd" * 32, "run")
    output = encode(np.zeros((40, 50, 3), np.uint8), fmt)

    # Two subjects: made one, so exiv2 (and every reader built on it) reads the scan's and ours.
    packet = _two_subjects_xmp()
    scan = (
        encode(gray_image(40, 50), "JPEG", xmp=packet)
        if fmt == "JPEG"
        else encode(gray_image(40, 50), "PNG", pnginfo=_png_xmp(packet))
    )
    odd = embed(output, fmt, scan, info)
    with pyexiv2.ImageData(odd) as img:
        xmp = img.read_xmp()
    assert xmp["Xmp.colorize.sourceSha256"] == "ab" * 32 and SOURCE_RIGHTS in xmp["Xmp.dc.rights"]['lang="x-default"']

    # Too large for a JPEG's XMP segment: the output keeps ours, and its row says what is left out.
    lost: list[str] = []
    big = encode(gray_image(40, 50), "PNG", pnginfo=_png_xmp(_two_subjects_xmp(filler=70_000)))
    out = embed(encode(np.zeros((40, 50, 3), np.uint8), "JPEG"), "JPEG", big, info, lost)
    assert read_provenance(out)["model_id"] == "m@cd"
    assert lost and lost[0].startswith("the scan's XMP could not be written and is not in the output (")


def _png_xmp(packet: bytes):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet.decode())
    return info


def test_a_quarter_turn_swaps_the_carried_exif_resolution():
    exif = Image.Exif()
    exif[0x0112], exif[0x011A], exif[0x011B], exif[0x0128] = 6, 300.0, 600.0, 2
    exif[0x013B] = SOURCE_CREATOR
    scan = encode(gray_image(40, 80), "JPEG", exif=exif)
    meta = source_metadata(scan)
    assert (
        float(eval(meta.exif["Exif.Image.XResolution"].replace("/", "/")))
        if False
        else meta.exif["Exif.Image.XResolution"]
    ) == "600/1"
    assert meta.exif["Exif.Image.YResolution"] == "300/1"


def test_inspect_on_a_folder_or_a_non_image_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1 and "Is a directory" in result.output and "Traceback" not in result.output
    (tmp_path / "notes.txt").write_text("box 3, scanned twice")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "notes.txt")])
    assert result.exit_code == 1 and "is not an image" in result.output and "provenance" not in result.output


def test_xmp_that_is_xml_but_no_rdf_is_left_out_and_said():
    meta = source_metadata(encode(gray_image(40, 50), "JPEG", xmp=b"<notes><note>scanned twice</note></notes>"))
    assert (
        meta.xmp == "" and meta.problem == "the scan's XMP is XML but holds no RDF (rdf:RDF) and is not in the output"
    )


def test_a_description_that_is_no_language_alternative_stays_the_default_one_and_is_said():
    """dc:description as an rdf:Bag (XMP wants an rdf:Alt): exiv2 keeps one item, as language
    "x-repair"; the output shows it as its default description, with ours, and the row says so."""
    bag = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Bag>'
        b"<rdf:li>Harbour, box 3</rdf:li></rdf:Bag></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    meta = source_metadata(encode(gray_image(40, 50), "JPEG", xmp=bag))
    assert "not a language alternative (rdf:Alt)" in meta.problem
    info = ProvenanceInfo("/scans/a.jpg", "ab" * 32, "m@cd", "cd" * 32, "run")
    out = embed(encode(gray_image(40, 50), "JPEG"), "JPEG", meta, info, [])
    described = pyexiv2.ImageData(out).read_xmp()["Xmp.dc.description"]
    assert described == {'lang="x-default"': f"Harbour, box 3\n\n{info.description}"}


@pytest.mark.parametrize(
    "derived",
    [
        '<xmpMM:DerivedFrom rdf:parseType="Resource"><stRef:filePath>/scans/a.tif</stRef:filePath></xmpMM:DerivedFrom>',
        '<xmpMM:DerivedFrom stRef:filePath="/scans/a.tif"/>',  # exiv2's rewrite
        '<xmpMM:DerivedFrom><rdf:Description stRef:filePath="/scans/a.tif"/></xmpMM:DerivedFrom>',  # Adobe's
        "<xmpMM:DerivedFrom><rdf:Description><stRef:filePath>/scans/a.tif</stRef:filePath></rdf:Description>"
        "</xmpMM:DerivedFrom>",
    ],
)
def test_inspect_reads_the_parent_a_file_says_it_was_derived_from_in_every_layout(derived):
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" '
        f'xmlns:stRef="http://ns.adobe.com/xap/1.0/sType/ResourceRef#">{derived}</rdf:Description>'
        "</rdf:RDF></x:xmpmeta>"
    )
    assert read_provenance(encode(gray_image(40, 50), "JPEG", xmp=packet.encode()))["derived_from"] == "/scans/a.tif"
