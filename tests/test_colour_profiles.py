"""Scans tagged with ICC profiles (Gray Gamma, Adobe RGB, ...) are read in sRGB, as a colour-managed
viewer shows them; sRGB profiles change nothing; a profile that cannot be applied is said on the row.

Expected tones come from the profiles' own formulas (a pure gamma curve to sRGB's), or from Pillow's
binding of LittleCMS, not from the code under test.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from colorize.color import COLOUR_METHOD
from colorize.engine import Colorizer
from colorize.imaging import decode_rgb, decode_scan, embedded_profile, with_png_chunk
from colorize.jpeg_lane import JpegLane, read_header
from colorize.manifest import new_run_id
from colorize.modelfile import load_model
from colorize.plan import RunOptions, WorkItem
from colorize.process import ShardProcessor
from colorize.storage import open_storage
from tests.helpers import colour_image, encode, gray_image, write

GRAY_18 = imagecodecs.cms_profile("gray", gamma=1.8)  # Gray Gamma 1.8, as Photoshop's
ADOBE_GAMMA = 563 / 256
ADOBE_RGB = imagecodecs.cms_profile(  # Adobe RGB (1998): its primaries, D65
    "rgb", primaries=[0.64, 0.33, 0.21, 0.71, 0.15, 0.06], whitepoint=[0.3127, 0.3290], gamma=ADOBE_GAMMA
)
SRGB_COPIES = [imagecodecs.cms_profile("srgb"), ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()]


def _srgb_of_gamma(levels: np.ndarray, gamma: float, top: int) -> np.ndarray:
    """Gray levels of a pure-gamma space -> the sRGB levels of the same lightness (float64)."""
    linear = (np.asarray(levels, dtype=np.float64) / top) ** gamma
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055) * top


def _stored(data: bytes) -> np.ndarray:
    """The gray values a file stores, read by Pillow with no colour management."""
    img = Image.open(io.BytesIO(data))
    return np.asarray(img if img.mode.startswith("I;16") else img.convert("L"))


def _with_iccp(png: bytes, profile: bytes) -> bytes:
    """A PNG (OpenCV's, which writes no profile) with an ``iCCP`` chunk after its header."""
    return with_png_chunk(png, b"iCCP", b"scanner profile\x00\x00" + zlib.compress(profile))


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _cmyk_print_profile() -> bytes:
    """A CMYK print profile (ICC v2, output class, Lab connection space) with one lut8 A2B0 tag.

    Each ink's coverage gains as ``v ** 0.6`` (dot gain: half the black ink prints as 66% black);
    lightness is the product of what each ink leaves; cyan turns the colour blue-green, magenta red,
    yellow yellow. Built here because no CMYK profile comes with the libraries.
    """
    gain = np.round(255 * (np.arange(256) / 255) ** 0.6).astype(np.uint8).tobytes()
    clut = bytearray()
    for c, m, y, k in np.ndindex(2, 2, 2, 2):  # the grid's corners, the last input varying fastest
        lightness = (1 - k) * (1 - 0.25 * c) * (1 - 0.25 * m) * (1 - 0.1 * y)
        clut += bytes([round(255 * lightness), 128 + 40 * m - 30 * c, 128 + 60 * y - 40 * c])
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + gain * 4 + bytes(clut) + bytes(range(256)) * 3
    d50 = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"A2B0", lut), (b"wtpt", b"XYZ " + bytes(4) + d50)]
    at, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", at + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = (struct.pack(">I", at + len(body)) + b"none" + bytes([2, 0x10, 0, 0]) + b"prtrCMYKLab " + bytes(12)
              + b"acsp" + bytes(28) + d50 + bytes(48))  # fmt: skip
    return header + struct.pack(">I", len(tags)) + table + body


CMYK_PRINT = _cmyk_print_profile()


def _cmyk_file(ink: np.ndarray, fmt: str, **options: object) -> bytes:
    """(H, W, 4) uint8 ink coverage (0: none) -> a CMYK file's bytes, by Pillow."""
    buf = io.BytesIO()
    Image.frombytes("CMYK", (ink.shape[1], ink.shape[0]), ink.tobytes()).save(buf, format=fmt, **options)
    return buf.getvalue()


def _with_gama(png: bytes, file_gamma: float, chromaticity: tuple[float, ...] | None = None) -> bytes:
    """A PNG with a gAMA chunk (and cHRM: white point and primaries, x, y each) but no profile."""
    data = with_png_chunk(png, b"gAMA", struct.pack(">I", round(file_gamma * 100000)))
    if chromaticity is not None:
        data = with_png_chunk(data, b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in chromaticity)))
    return data


def _jp2_with_icc(pixels: np.ndarray, profile: bytes) -> bytes:
    """A .jp2 whose colour specification box carries ``profile`` (method 2) instead of naming a space."""
    data = bytes(imagecodecs.jpeg2k_encode(pixels, codecformat="jp2", reversible=True))
    at = data.index(b"colr") - 4
    size = int.from_bytes(data[at : at + 4], "big")
    colr = (11 + len(profile)).to_bytes(4, "big") + b"colr\x02\x00\x00" + profile
    grown = data[:at] + colr + data[at + size :]
    header = grown.index(b"jp2h") - 4
    length = int.from_bytes(grown[header : header + 4], "big") + len(colr) - size
    return grown[:header] + length.to_bytes(4, "big") + grown[header + 4 :]


@pytest.mark.parametrize(("fmt", "dtype"), [("PNG", np.uint8), ("TIFF", np.uint8), ("JPEG", np.uint8),
                                            ("PNG", np.uint16), ("TIFF", np.uint16), ("JPEG2000", np.uint8),
                                            ("JPEG2000", np.uint16)])  # fmt: skip
def test_a_gray_scan_tagged_gray_gamma_is_read_as_the_srgb_gray_it_shows(fmt, dtype):
    pixels = gray_image(90, 120, seed=4, dtype=dtype)
    data = _jp2_with_icc(pixels, GRAY_18) if fmt == "JPEG2000" else encode(pixels, fmt, icc_profile=GRAY_18)
    stored = pixels if fmt == "JPEG2000" else _stored(data)
    top = 255 if dtype == np.uint8 else 65535
    scan = decode_scan(data)
    assert scan.format == fmt and scan.gray.dtype == dtype and scan.note == ""
    assert np.abs(scan.gray - _srgb_of_gamma(stored, 1.8, top)).max() <= top / 255  # within one 8-bit level
    # Gray Gamma 1.8's mid-gray 128 is sRGB's 146: the scan shows lighter than its stored values.
    assert scan.gray.mean() > stored.mean() + 0.05 * top


def test_an_rgb_scan_tagged_adobe_rgb_is_converted_whole():
    rgb = np.ascontiguousarray(colour_image(60, 80, seed=2) // 2 + 64)  # inside sRGB's gamut
    data = encode(rgb, "PNG", icc_profile=ADOBE_RGB)
    reference = np.asarray(ImageCms.profileToProfile(
        Image.open(io.BytesIO(data)), io.BytesIO(ADOBE_RGB), ImageCms.createProfile("sRGB"),
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
    ))  # fmt: skip
    assert np.abs(reference.astype(int) - rgb).max() > 20  # the profile matters here
    assert np.abs(decode_rgb(data).astype(int) - reference).max() <= 1  # training pairs' colour too
    scan = decode_scan(data)
    assert np.abs(scan.gray.astype(int) - cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY)).max() <= 1
    assert scan.preview is not None and scan.note == ""


def test_a_16_bit_rgb_master_keeps_its_precision_through_the_conversion():
    levels = np.tile(np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32), (1, 2))
    neutral = np.repeat(levels[..., None], 3, axis=2)  # a gray print scanned in colour: R = G = B
    ok, png = cv2.imencode(".png", neutral)
    assert ok
    scan = decode_scan(_with_iccp(png.tobytes(), ADOBE_RGB))
    assert scan.bit_depth == 16 and scan.gray.dtype == np.uint16 and scan.note == ""
    # Within a tenth of an 8-bit level of Adobe RGB's curve taken to sRGB's: 16 bits, not 8, survive.
    assert np.abs(scan.gray - _srgb_of_gamma(levels, ADOBE_GAMMA, 65535)).max() <= 26


@pytest.mark.parametrize("copy", range(len(SRGB_COPIES)), ids=["imagecodecs", "pillow"])
def test_srgb_profiles_change_nothing(copy):
    profile = SRGB_COPIES[copy]
    for pixels in (gray_image(50, 70), colour_image(50, 70)):
        tagged, plain = decode_scan(encode(pixels, "PNG", icc_profile=profile)), decode_scan(encode(pixels, "PNG"))
        assert np.array_equal(tagged.gray, plain.gray) and tagged.note == ""
        assert (tagged.preview is None) == (plain.preview is None)
        assert tagged.preview is None or np.array_equal(tagged.preview, plain.preview)


def test_a_profile_that_cannot_be_applied_is_said_and_the_pixels_read_as_srgb():
    gray = gray_image(40, 60)
    damaged = decode_scan(encode(gray, "PNG", icc_profile=GRAY_18[:100]))
    assert np.array_equal(damaged.gray, gray)
    assert damaged.note == (
        "its embedded ICC profile cannot be read: damaged or not a profile; the pixels were read as sRGB"
    )
    # A gray profile on colour pixels (a WebP is always RGB): a viewer ignores it, and so do we, saying so.
    webp = decode_scan(encode(np.repeat(gray[..., None], 3, axis=2), "WEBP", lossless=True, icc_profile=GRAY_18))
    assert "its embedded ICC profile is for GRAY pixels, not RGB ones: not applied" in webp.note
    assert embedded_profile(Image.open(io.BytesIO(encode(gray, "PNG"))), b"") is None


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_scan_is_read_through_its_print_profile(fmt):
    ink = np.zeros((40, 256, 4), np.uint8)
    ink[..., 3] = np.arange(256)  # black ink alone, from none to full: a gray scan kept in CMYK
    ink[:20, :64, 0] = 200  # and a cyan corner
    data = _cmyk_file(ink, fmt, icc_profile=CMYK_PRINT, **({"quality": 100} if fmt == "JPEG" else {}))
    stored = Image.open(io.BytesIO(data))
    reference = np.asarray(ImageCms.profileToProfile(
        stored, io.BytesIO(CMYK_PRINT), ImageCms.createProfile("sRGB"),
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB",
    )).astype(int)  # fmt: skip
    scan = decode_scan(data)
    assert scan.mode == "CMYK" and scan.note == ""
    assert np.abs(scan.gray - cv2.cvtColor(reference.astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(int)).max() <= 1
    assert np.abs(decode_rgb(data) - reference).max() <= 1  # training pairs' colour too
    # The dot gain prints half the black ink darker than the half gray Pillow's plain conversion makes.
    assert reference[30, 128, 0] < 90 < np.asarray(stored.convert("RGB"))[30, 128, 0]
    assert reference[5, 10, 2] > reference[5, 10, 0] + 20  # the cyan corner stays blue-green


def test_a_cmyk_scan_with_a_profile_for_other_pixels_is_converted_without_it():
    ink = np.zeros((30, 40, 4), np.uint8)
    ink[..., 3] = 128
    data = _cmyk_file(ink, "TIFF", icc_profile=ADOBE_RGB)
    scan = decode_scan(data)
    assert np.array_equal(scan.gray, np.asarray(Image.open(io.BytesIO(data)).convert("L")))
    assert scan.note == (
        "its embedded ICC profile is for RGB pixels, not CMYK ones: not applied; "
        "the CMYK pixels were made RGB without it"
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_png_in_linear_light_is_read_by_its_gama_chunk(dtype):
    pixels = gray_image(60, 80, seed=5, dtype=dtype)
    top = 255 if dtype == np.uint8 else 65535
    plain = encode(pixels, "PNG")
    scan = decode_scan(_with_gama(plain, 1.0))  # a scanner's linear PNG: gAMA 1.0 and no profile
    assert scan.note == "" and scan.gray.dtype == dtype
    assert np.abs(scan.gray - _srgb_of_gamma(pixels, 1.0, top)).max() <= top / 255
    # Precedence (PNG 11.3.3): an iCCP chunk, then an sRGB chunk, then gAMA.
    assert np.array_equal(decode_scan(_with_gama(with_png_chunk(plain, b"sRGB", b"\x00"), 1.0)).gray, pixels)
    tagged = decode_scan(_with_gama(encode(pixels, "PNG", icc_profile=GRAY_18), 1.0))
    assert np.abs(tagged.gray - _srgb_of_gamma(pixels, 1.8, top)).max() <= top / 255


def test_a_png_whose_gama_is_srgbs_reads_as_srgb_unless_its_primaries_differ():
    gray, rgb = gray_image(50, 70, seed=7), np.ascontiguousarray(colour_image(50, 70, seed=8) // 2 + 64)
    for pixels in (gray, rgb):  # 1/2.2, as writers of sRGB images put it: sRGB's curve, not a pure power
        plain = decode_scan(encode(pixels, "PNG"))
        assert np.array_equal(decode_scan(_with_gama(encode(pixels, "PNG"), 0.45455)).gray, plain.gray)
    srgb_white_and_primaries = (0.3127, 0.3290, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)
    same = decode_rgb(_with_gama(encode(rgb, "PNG"), 0.45455, srgb_white_and_primaries))
    assert np.array_equal(same, rgb)
    # Adobe RGB's primaries in cHRM: read as Adobe RGB is (its pure 2.2 power differs from sRGB's
    # curve by a level or two in these mid tones), not as sRGB.
    adobe_white_and_primaries = (0.3127, 0.3290, 0.64, 0.33, 0.21, 0.71, 0.15, 0.06)
    wide = decode_rgb(_with_gama(encode(rgb, "PNG"), 0.45455, adobe_white_and_primaries)).astype(int)
    assert np.abs(wide - rgb).max() > 20
    assert np.abs(wide - decode_rgb(encode(rgb, "PNG", icc_profile=ADOBE_RGB))).mean() < 2


def test_the_jpeg_lane_applies_a_gray_profile_as_the_cpu_does_and_leaves_rgb_profiles_to_it():
    gray_tagged = encode(gray_image(70, 90, seed=3), "JPEG", quality=95, icc_profile=GRAY_18)
    header = read_header(gray_tagged, 10**8)
    assert header is not None and header.tone is not None
    (decoded,) = JpegLane(torch.device("cpu")).decode([gray_tagged], [header])
    assert decoded is not None and np.array_equal(decoded.gray.numpy(), decode_scan(gray_tagged).gray)
    rgb = np.repeat(gray_image(70, 90)[..., None], 3, axis=2)
    assert read_header(encode(rgb, "JPEG", icc_profile=ADOBE_RGB), 10**8) is None  # converted whole, on the CPU
    srgb_tagged = read_header(encode(rgb, "JPEG", icc_profile=SRGB_COPIES[0]), 10**8)
    assert srgb_tagged is not None and srgb_tagged.tone is None
    assert read_header(encode(gray_image(70, 90), "JPEG", icc_profile=b"\x00" * 200), 10**8) is None  # the CPU notes it


def test_a_tagged_scans_output_has_the_tones_the_scan_shows(tmp_path: Path, tiny_model: Path):
    gray = gray_image(80, 100, seed=6)
    src = tmp_path / "src"
    write(src / "gamma18.png", encode(gray, "PNG", icc_profile=GRAY_18))
    write(src / "plain.png", encode(gray, "PNG"))
    write(src / "damaged.png", encode(gray, "PNG", icc_profile=b"\x01" * 300))
    write(src / "linear.png", _with_gama(encode(gray, "PNG"), 1.0))
    loaded = load_model(str(tiny_model))
    opts = RunOptions(run_id=new_run_id(), source=str(src), dest=str(tmp_path / "out"), model=str(tiny_model),
                      model_id=loaded.model_id)  # fmt: skip
    source, dest = open_storage(opts.source), open_storage(opts.dest)
    items = [WorkItem(o.key, o.size, o.mtime, None, o.key, "PNG") for o in source.list()]
    processor = ShardProcessor(opts, Colorizer(loaded, device="cpu"), source, dest)
    rows = {r.source_uri.rsplit("/", 1)[1]: r for r in processor.run(items)}
    assert {name: r.status for name, r in rows.items()} == dict.fromkeys(rows, "colorized")
    assert rows["gamma18.png"].reason == "" and rows["gamma18.png"].colour_method == COLOUR_METHOD
    assert "its embedded ICC profile cannot be read" in rows["damaged.png"].reason

    def lightness(name: str) -> np.ndarray:
        rgb = np.asarray(Image.open(tmp_path / "out" / name).convert("RGB"))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[..., 0].astype(float) * 100 / 255

    def srgb_lightness(levels: np.ndarray) -> np.ndarray:
        flat = np.repeat(np.clip(levels + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab)[..., 0].astype(float) * 100 / 255

    # The output keeps the scan's lightness as shown (Gray Gamma 1.8's, in sRGB), not its stored values'.
    assert np.abs(lightness("gamma18.png") - srgb_lightness(_srgb_of_gamma(gray, 1.8, 255))).mean() < 1.0
    assert np.abs(lightness("plain.png") - srgb_lightness(gray.astype(float))).mean() < 1.0
    assert np.abs(lightness("linear.png") - srgb_lightness(_srgb_of_gamma(gray, 1.0, 255))).mean() < 1.0
    assert np.array_equal(lightness("damaged.png"), lightness("plain.png"))


def test_a_camera_jpeg_that_names_adobe_rgb_in_exif_is_read_as_adobe_rgb():
    import pyexiv2

    levels = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    plain = encode(np.repeat(levels[..., None], 3, axis=2), "JPEG", quality=100, subsampling=0)

    def with_exif(tags: dict[str, str]) -> bytes:
        with pyexiv2.ImageData(plain) as img:
            img.modify_exif(tags)
            return img.get_bytes()

    # DCF's option colour space, as a camera set to Adobe RGB writes it: no profile, two EXIF tags.
    adobe = with_exif({"Exif.Photo.ColorSpace": "65535", "Exif.Iop.InteroperabilityIndex": "R03"})
    srgb = with_exif({"Exif.Photo.ColorSpace": "1", "Exif.Iop.InteroperabilityIndex": "R98"})
    stored = decode_scan(plain).gray.astype(float)
    assert np.array_equal(decode_scan(srgb).gray, decode_scan(plain).gray)
    assert np.abs(decode_scan(adobe).gray - _srgb_of_gamma(stored, ADOBE_GAMMA, 255)).max() <= 1.5
    assert read_header(adobe, 10**8) is None and read_header(srgb, 10**8) is not None  # converted on the CPU
