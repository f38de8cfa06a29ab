"""Reading every kind of scan archives hold, and writing outputs that keep format, depth and DPI."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from colorize.imaging import ScanError, decode_rgb, decode_scan, encode_image, output_format, output_key
from tests.helpers import colour_image, encode, gray_image

GRAY = gray_image(60, 80)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("JPEG2000", {})],
)
def test_every_format_decodes_to_the_same_gray(fmt, options):
    scan = decode_scan(encode(GRAY, fmt, **options))
    assert scan.format == fmt and scan.gray.shape == (60, 80) and scan.bit_depth == 8
    error = np.abs(scan.gray.astype(int) - GRAY)
    assert (error.mean() <= 2 and error.max() <= 12) if fmt == "JPEG" else error.max() == 0


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG2000"])
def test_16bit_gray_stays_16bit(fmt):
    gray16 = gray_image(40, 50, dtype=np.uint16)
    scan = decode_scan(encode(gray16, fmt))
    assert scan.mode == "I;16" and scan.bit_depth == 16 and scan.gray.dtype == np.uint16
    assert (scan.gray == gray16).all()


def test_multipage_tiff_uses_the_first_page_and_counts_pages():
    pages = [Image.fromarray(gray_image(30, 40, seed=i)) for i in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    scan = decode_scan(buf.getvalue())
    assert scan.pages == 3
    assert (scan.gray == np.asarray(pages[0])).all()


def test_exif_orientation_is_applied():
    tall = gray_image(80, 40)  # portrait as seen
    stored = np.rot90(tall, k=1)  # as a camera stores it, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buf, format="JPEG", quality=95, exif=exif)
    scan = decode_scan(buf.getvalue())
    assert scan.gray.shape == (80, 40)
    assert np.abs(scan.gray.astype(int) - tall).mean() < 3


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"])
def test_modes_decode_with_their_mode_recorded(mode):
    base = Image.fromarray(GRAY).convert("RGB")
    if mode == "I;16":
        img = Image.fromarray(gray_image(60, 80, dtype=np.uint16))
    elif mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("I;16",) else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    scan = decode_scan(buf.getvalue())
    assert scan.mode == mode
    assert scan.gray.shape == (60, 80)
    if mode != "I;16":
        tolerance = 6 if mode == "CMYK" else 1
        assert np.abs(scan.gray.astype(int) - GRAY).mean() <= tolerance


def test_alpha_is_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)  # black, fully transparent ...
    rgba[:, :5, 3] = 255  # ... except the left half, opaque black
    scan = decode_scan(encode(rgba, "PNG"))
    assert (scan.gray[:, :5] == 0).all() and (scan.gray[:, 5:] == 255).all()
    la = np.stack([np.zeros((10, 10), np.uint8), np.full((10, 10), 128, np.uint8)], axis=-1)
    assert abs(int(decode_scan(encode(la, "PNG")).gray[0, 0]) - 127) <= 1


def test_colour_sources_carry_a_small_preview_for_the_detector():
    scan = decode_scan(encode(colour_image(600, 900), "PNG"))
    assert scan.preview is not None and max(scan.preview.shape[:2]) == 256
    assert decode_scan(encode(GRAY, "PNG")).preview is None


def test_pixel_limit_is_checked_before_decoding():
    # A header that claims 30000 x 30000 with no pixel data behind it: decoding would fail as
    # truncated, so the limit's message proves the check came first.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit gray, 30000 x 30000
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
    with pytest.raises(ScanError, match=r"30000x30000 = 900.0 MP, over the limit of 200.0 MP"):
        decode_scan(data)
    with pytest.raises(ScanError, match="over the limit of 0.0 MP"):
        decode_scan(encode(GRAY, "PNG"), max_pixels=100)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", r"empty file \(0 bytes\)"),
        (b"just some text, not a picture\n" * 10, "not an image"),
        (encode(GRAY, "JPEG")[:300], "truncated image header: the file ends early"),
        (encode(gray_image(400, 400), "JPEG")[:20000], "truncated image data: the file ends early"),
        (encode(GRAY, "PNG")[:60] + b"\x00" * 400, "(truncated|corrupt) image data"),
        (b"GIF89a" + b"\x00" * 50, "(unsupported image format|corrupt|not an image)"),
        (encode(gray_image(300, 300), "JPEG2000")[:20000], "corrupt or truncated image data: OpenJPEG could not"),
    ],
    ids=["zero-byte", "non-image", "truncated-header", "truncated-data", "corrupt-png", "gif", "truncated-jp2"],
)
def test_bad_files_get_specific_reasons(data, reason):
    with pytest.raises(ScanError, match=reason):
        decode_scan(data)


def _noise_jpeg() -> bytes:
    return encode(np.random.default_rng(1).normal(128, 40, (600, 800)).clip(0, 255).astype(np.uint8), "JPEG")


def test_a_jpeg_whose_data_is_damaged_is_refused_though_pillow_decodes_it():
    whole = _noise_jpeg()
    cut_with_end = whole[: len(whole) // 2] + b"\xff\xd9"  # a copy cut short, its end marker added back
    zeroed = bytearray(whole)
    zeroed[len(zeroed) // 2 : len(zeroed) // 2 + 20000] = bytes(20000)  # a bad sector's worth of zeros
    for damaged in (cut_with_end, bytes(zeroed)):
        Image.open(io.BytesIO(damaged)).load()  # Pillow says nothing: the rest of the picture is gray
        with pytest.raises(ScanError, match="corrupt image data: the JPEG's compressed data is damaged or cut short"):
            decode_scan(damaged)
        with pytest.raises(ScanError, match="damaged or cut short"):
            decode_rgb(damaged)  # nor is it a training photo
    padded = whole[:-2] + bytes(10) + b"\xff\xd9"  # an encoder's few bytes of padding: whole
    assert decode_scan(padded).gray.shape == (600, 800)


def test_a_tiff_without_resolution_tags_records_no_resolution():
    plain = encode(GRAY, "TIFF")
    assert Image.open(io.BytesIO(plain)).info.get("dpi") == (1, 1)  # Pillow's, made up
    assert decode_scan(plain).dpi is None
    assert decode_scan(encode(GRAY, "TIFF", dpi=(600, 600))).dpi == (600, 600)


def test_outputs_keep_format_bit_depth_and_dpi():
    rgb = colour_image(30, 40)
    for fmt in ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "JPEG2000"):
        img = Image.open(io.BytesIO(encode_image(rgb, fmt, dpi=(300, 300))))
        assert img.format == fmt and img.size == (40, 30) and img.mode == "RGB"
        if fmt in ("JPEG", "PNG", "TIFF", "JPEG2000"):
            assert tuple(round(v) for v in img.info["dpi"]) == (300, 300)
        if fmt == "JPEG2000":  # lossless, in a .jp2 container (which holds the provenance XMP)
            assert (np.asarray(img) == rgb).all() and img.get_format_mimetype() == "image/jp2"
        if fmt in ("PNG", "TIFF", "BMP"):
            assert (np.asarray(img) == rgb).all()
        if fmt == "TIFF":
            assert img.info["compression"] == "tiff_adobe_deflate"
    rgb16 = colour_image(30, 40).astype(np.uint16) * 257
    tiff16 = encode_image(rgb16, "TIFF", dpi=(600, 600))
    import cv2

    png16 = encode_image(rgb16, "PNG", dpi=(600, 400))
    back = cv2.imdecode(np.frombuffer(png16, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and (back[..., ::-1] == rgb16).all()
    assert tuple(round(v) for v in Image.open(io.BytesIO(png16)).info["dpi"]) == (600, 400)  # the pHYs chunk

    back = cv2.imdecode(np.frombuffer(tiff16, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (30, 40, 3)
    assert (back[..., ::-1] == rgb16).all()
    deep = np.random.default_rng(0).integers(0, 65536, (40, 50, 3), dtype=np.uint16)  # every bit matters
    back = cv2.imdecode(np.frombuffer(encode_image(deep, "JPEG2000"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and (back[..., ::-1] == deep).all()  # JPEG 2000: lossless, 16 bits kept
    assert tuple(round(v) for v in Image.open(io.BytesIO(tiff16)).info["dpi"]) == (600, 600)


def test_output_key_changes_only_the_extension_when_the_format_changes():
    assert output_key("a/b/scan.TIF", "TIFF", "TIFF") == "a/b/scan.TIF"
    assert output_key("a/b/scan.tif", "TIFF", "JPEG") == "a/b/scan.jpg"
    assert output_format("TIFF", "same") == "TIFF" and output_format("PNG", "jpeg") == "JPEG"
    assert output_key("a/scan.tif", "TIFF", output_format("TIFF", "jp2")) == "a/scan.jp2"
    with pytest.raises(ValueError):
        output_format("PNG", "gif")


def test_a_camera_jpeg_with_a_second_image_is_read_as_the_jpeg_it_is():
    # MPO: a JPEG carrying further images (a preview, a gain map, a stereo pair's other eye).
    buf = io.BytesIO()
    second = Image.fromarray(GRAY[:30, :40])
    Image.fromarray(GRAY).save(buf, format="MPO", save_all=True, append_images=[second], quality=95)
    scan = decode_scan(buf.getvalue())
    assert scan.format == "JPEG" and scan.pages == 1 and scan.gray.shape == (60, 80)
    assert output_format(scan.format, "same") == "JPEG"
    assert np.abs(scan.gray.astype(int) - GRAY).mean() <= 2


@pytest.mark.parametrize("colour", [False, True])
def test_12_bit_jpeg_2000_is_scaled_to_the_full_range(colour):
    import imagecodecs

    gray16 = gray_image(40, 50, dtype=np.uint16)
    gray12 = (gray16 >> 4).astype(np.uint16)  # what a 12-bit scanner stores
    samples = np.stack([gray12] * 3, axis=-1) if colour else gray12
    data = bytes(imagecodecs.jpeg2k_encode(samples, codecformat="jp2", bitspersample=12, reversible=True))
    scan = decode_scan(data)
    expected16 = gray12.astype(np.float64) * 65535 / 4095
    # Colour too keeps 16 bits (Pillow would read it as 8), as a 48-bit TIFF does.
    assert scan.bit_depth == 16 and np.abs(scan.gray.astype(float) - expected16).max() <= 1
    assert (scan.preview is not None) == colour


def test_a_quarter_turn_swaps_the_resolution_with_the_sides():
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(gray_image(40, 80)).save(buf, format="JPEG", dpi=(300, 600), exif=exif)
    scan = decode_scan(buf.getvalue())
    assert scan.gray.shape == (80, 40) and scan.dpi is not None
    assert (round(scan.dpi[0]), round(scan.dpi[1])) == (600, 300)


def test_a_damaged_later_page_leaves_the_first_page_and_says_so():
    pages = [Image.fromarray(gray_image(30, 40, seed=i)) for i in range(2)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    data = bytearray(buf.getvalue())
    # The first directory's pointer to the next one, made to point past the end of the file.
    first_ifd = int.from_bytes(data[4:8], "little")
    entries = int.from_bytes(data[first_ifd : first_ifd + 2], "little")
    next_at = first_ifd + 2 + 12 * entries
    data[next_at : next_at + 4] = (len(data) + 1000).to_bytes(4, "little")
    scan = decode_scan(bytes(data))
    assert scan.pages == 1 and (scan.gray == np.asarray(pages[0])).all()
    assert scan.note.startswith("the pages after the first cannot be counted or read")


def test_a_known_header_that_cannot_be_read_is_not_called_not_an_image():
    # A TIFF whose directory comes after the pixels (as libtiff writes it), cut in half.
    import cv2

    ok, tif = cv2.imencode(".tif", gray_image(200, 200))
    assert ok
    with pytest.raises(ScanError, match="a TIFF file that cannot be read: cut short, damaged"):
        decode_scan(tif.tobytes()[: len(tif) // 2])


@pytest.mark.parametrize(("scale", "peak"), [(1.0, 1.0), (255.0, 255.0), (65535.0, 65535.0)])
def test_float_scans_are_read_in_the_range_they_use(scale, peak):
    values = GRAY.astype(np.float32) / 255.0 * scale
    scan = decode_scan(encode(values, "TIFF"))
    assert scan.bit_depth == 16
    assert np.abs(scan.gray.astype(float) / 65535 - GRAY / 255.0).max() < 1 / 255, f"peak {peak}"


@pytest.mark.parametrize("fmt", [".tif", ".png"])
def test_16_bit_colour_scans_stay_16_bit_and_upright(fmt):
    import cv2

    gray16 = gray_image(40, 60, dtype=np.uint16)
    rgb16 = np.stack([gray16, gray16, gray16], axis=-1)
    ok, data = cv2.imencode(fmt, rgb16)
    assert ok
    scan = decode_scan(data.tobytes())
    assert scan.mode == "RGB" and scan.bit_depth == 16 and scan.gray.dtype == np.uint16
    assert np.abs(scan.gray.astype(int) - gray16).max() <= 1
    assert scan.preview is not None and scan.preview.dtype == np.uint8


def test_a_gray_level_marked_transparent_is_white():
    gray = GRAY.copy()
    gray[:10] = 7  # the level PNG's tRNS marks transparent
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG", transparency=7)
    scan = decode_scan(buf.getvalue())
    assert (scan.gray[:10] == 255).all() and (scan.gray[10:] == GRAY[10:]).all()


def test_a_jpeg_that_records_no_resolution_gets_none_made_up():
    exif = Image.Exif()
    exif[0x013B] = "A. Photographer"  # EXIF without a resolution: Pillow would report 72 dpi
    assert decode_scan(encode(GRAY, "JPEG", exif=exif)).dpi is None
    assert decode_scan(encode(GRAY, "JPEG", exif=exif, dpi=(72, 72))).dpi == (72, 72)  # recorded: kept


@pytest.mark.parametrize("channels", [2, 4])
def test_16_bit_jpeg_2000_with_alpha_is_put_on_white_keeping_16_bits(channels):
    import imagecodecs

    gray16 = gray_image(30, 40, dtype=np.uint16)
    alpha = np.full_like(gray16, 65535)
    alpha[:, :20] = 0  # the left half transparent: white
    samples = np.dstack([gray16] * (channels - 1) + [alpha])
    scan = decode_scan(bytes(imagecodecs.jpeg2k_encode(samples, codecformat="jp2", reversible=True)))
    assert scan.bit_depth == 16 and scan.gray.dtype == np.uint16
    assert (scan.gray[:, :20] == 65535).all() and np.abs(scan.gray[:, 20:].astype(int) - gray16[:, 20:]).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_tiff_whose_zero_is_white_is_read_as_it_shows_not_as_a_negative(dtype):
    import imagecodecs

    shown = gray_image(30, 40, dtype=dtype)  # what the scan looks like
    stored = np.invert(shown)  # WhiteIsZero: 0 is white, the top value black
    data = imagecodecs.tiff_encode(stored, photometric="miniswhite")
    assert Image.open(io.BytesIO(data)).tag_v2[262] == 0
    scan = decode_scan(data)
    assert scan.gray.dtype == dtype and np.array_equal(scan.gray, shown)


def test_a_48_bit_tiff_stored_plane_by_plane_is_read_as_it_shows():
    import imagecodecs

    from colorize.color import luma

    rgb = np.dstack([gray_image(30, 40, seed=s, dtype=np.uint16) for s in range(3)])
    for planes in ("contig", "separate"):  # one plane per channel: OpenCV read it as noise
        stored = rgb if planes == "contig" else np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
        data = imagecodecs.tiff_encode(stored, planarconfig=planes, photometric="rgb")
        assert Image.open(io.BytesIO(data)).tag_v2[284] == (1 if planes == "contig" else 2)
        scan = decode_scan(data)
        assert scan.bit_depth == 16 and np.array_equal(scan.gray, luma(rgb)), planes


def test_a_64_bit_rgbi_tiffs_infrared_sample_is_not_taken_for_alpha():
    """A film scanner's RGB + infrared master (SilverFast's HDRi): the fourth sample is no alpha."""
    import tifffile

    from colorize.color import luma

    rgb = np.dstack([gray_image(30, 40, seed=s, dtype=np.uint16) for s in range(3)])
    infrared = np.full((30, 40), 20000, np.uint16)  # dust shows dark in it; it says nothing of opacity
    for samples, kind in (("unspecified", "infrared"), ("unassalpha", "alpha"), ("assocalpha", "alpha")):
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.dstack([rgb, infrared]), photometric="rgb", extrasamples=[samples])
        scan = decode_scan(buf.getvalue())
        assert scan.bit_depth == 16
        if kind == "infrared":
            assert np.array_equal(scan.gray, luma(rgb))
        else:  # real alpha still goes on white: a third opaque here, so lighter than the pixels
            assert (scan.gray.astype(int) >= luma(rgb)).all() and scan.gray.mean() > luma(rgb).mean() + 5000

    # Premultiplied alpha (ExtraSamples 1): a transparent pixel is white, a half-covered one shows half.
    straight = np.full((2, 2, 3), 40000, np.uint16)
    alpha = np.array([[0, 65535], [32768, 65535]], np.uint16)
    premultiplied = (straight * (alpha[..., None] / 65535)).round().astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.dstack([premultiplied, alpha]), photometric="rgb", extrasamples=["assocalpha"])
    gray = decode_scan(buf.getvalue()).gray.astype(int)
    assert gray[0, 0] == 65535 and gray[0, 1] == 40000 and abs(gray[1, 0] - (40000 + 65535) / 2) < 4


@pytest.mark.parametrize(
    ("stored", "scale"),
    [(np.uint32, 65537), (np.int32, 32768), (np.int16, 0.5), (np.uint32, 1)],
    ids=["32-bit", "signed-32-bit", "signed-16-bit", "16-bit-stored-wide"],
)
def test_32_bit_and_signed_tiffs_are_read_at_their_full_scale(stored, scale):
    """Pillow holds these as 32-bit signed integers: a full-range 32-bit scan read as 16-bit counts was all white."""
    import imagecodecs

    gray16 = gray_image(30, 40, dtype=np.uint16)
    scan = decode_scan(imagecodecs.tiff_encode((gray16.astype(np.float64) * scale).astype(stored)))
    assert scan.bit_depth == 16 and np.abs(scan.gray.astype(int) - gray16).max() <= 1
