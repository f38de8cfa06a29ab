"""Decoding scans and encoding outputs: bytes in, arrays out, and back.

Every quirk of real scans is made explicit here, once: EXIF orientation, alpha on white, palette and
CMYK images, 16-bit gray, multi-page TIFFs, embedded colour profiles (:mod:`colorize.icc`), and a
pixel limit checked before any pixel is decoded.
Errors are :class:`ScanError` with a reason a person can act on.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import imagecodecs
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.ExifTags import IFD

from colorize import icc
from colorize.color import luma

log = logging.getLogger(__name__)

# Our own limit replaces Pillow's decompression-bomb guard, so that the refusal is a clean,
# configurable error raised before decoding rather than a warning or an exception half-way.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 200_000_000
PREVIEW_SIZE = 256

# Pillow format name -> (canonical extension, MIME type). Only these are listed as scans.
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": (".jpg", "image/jpeg"),
    "PNG": (".png", "image/png"),
    "TIFF": (".tif", "image/tiff"),
    "WEBP": (".webp", "image/webp"),
    "BMP": (".bmp", "image/bmp"),
    "JPEG2000": (".jp2", "image/jp2"),
}
# JPEG 2000 as archives keep it: the .jp2 file format. Bare codestreams (.j2k, .j2c) have no place
# for metadata, so an output could not say it is machine-coloured; they are left alone, with a warning.
SCAN_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".jp2"})
OUTPUT_FORMATS = ("same", "jpeg", "png", "tiff", "jp2")
_FORCED = {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "jp2": "JPEG2000"}
JPEG_QUALITY = 95


def image_extensions(extensions: Iterable[str]) -> set[str]:
    """Those of ``extensions`` (lower case, with the dot) that Pillow knows as images but are not scans.

    Runs read only :data:`SCAN_EXTENSIONS`; these (``.gif``, ``.j2k``, ``.psd``, ...) are images
    they leave alone, which a person should hear about.
    """
    known = Image.registered_extensions().keys() | _OTHER_IMAGES
    return {e for e in extensions if e in known and e not in SCAN_EXTENSIONS}


# Images Pillow has no plugin for, which archives hold: cameras' raw files (a copy stand's DNG
# masters), HEIF from phones, JPEG XL.
_OTHER_IMAGES = frozenset(
    {".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".raf", ".rw2", ".heic", ".heif", ".avif", ".jxl"}
)


class ScanError(Exception):
    """A file that cannot be used as a scan. ``str(err)`` is the manifest's ``reason``."""


@dataclass(frozen=True)
class Scan:
    """A decoded scan, reduced to what colorization needs.

    Attributes:
        gray: (H, W) uint8 or uint16, sRGB-encoded gray levels at full resolution, upright (a
            scan's embedded ICC profile applied).
        preview: (h, w, 3) uint8 RGB, long side at most 256, only for sources with colour
            channels (for the colour detector); None for single-channel sources.
        mode: the source's Pillow mode (``L``, ``RGB``, ``I;16``, ``CMYK``, ...).
        bit_depth: 8 or 16, the depth of ``gray``.
        format: Pillow format name (``JPEG``, ``PNG``, ``TIFF``, ``WEBP``, ``BMP``, ``JPEG2000``).
        pages: number of frames in the file (multi-page TIFF); only the first is used.
        dpi: (x, y) resolution of the upright image when the file records one.
        note: what of the file could not be read though the first page could ("" when nothing).
    """

    gray: np.ndarray
    preview: np.ndarray | None
    mode: str
    bit_depth: int
    format: str
    pages: int
    dpi: tuple[float, float] | None
    note: str = ""

    @property
    def height(self) -> int:
        return int(self.gray.shape[0])

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ScanError("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        if (kind := _signature(data)) is not None:
            raise ScanError(
                f"a {kind} file that cannot be read: cut short, damaged, or a layout the reader does not "
                f"support ({err})"
            ) from None
        raise ScanError("not an image: no known image format recognised in the file header") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise _decode_error(err, "header") from None


_SIGNATURES = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"BM", "BMP"),
)  # fmt: skip


def _signature(data: bytes) -> str | None:
    """The format a file's first bytes name, whether or not the rest of it can be read."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


def _decode_error(err: Exception, part: str) -> ScanError:
    """Name what is wrong: a file cut short (an interrupted copy) or damaged bytes."""
    text = str(err) or type(err).__name__
    lower = text.lower()
    if isinstance(err, EOFError) or any(w in lower for w in ("truncat", "end of file", "premature", "not enough")):
        return ScanError(f"truncated image {part}: the file ends early ({text})")
    return ScanError(f"corrupt image {part}: {text}")


def dpi_of(img: Image.Image) -> tuple[float, float] | None:
    """The resolution a file records, or None when it records none."""
    dpi = img.info.get("dpi")
    if not dpi:
        return None
    if img.format in ("JPEG", "MPO") and img.info.get("jfif_unit") not in (1, 2):
        # Pillow reports 72 dpi for a JPEG whose EXIF holds no resolution: made up, not recorded.
        exif = img.getexif()
        if 0x011A not in exif or 0x011B not in exif:  # XResolution, YResolution
            return None
    if img.format == "TIFF" and (282 not in img.tag_v2 or 283 not in img.tag_v2):
        return None  # Pillow reports 1 dpi for a TIFF without resolution tags: made up too
    try:
        x, y = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError, IndexError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def _on_white(arr: np.ndarray) -> np.ndarray:
    """Alpha composited onto white: (H, W, 2) gray and alpha, (H, W, 3) RGB or (H, W, 4) RGBA, uint8
    or uint16 -> (H, W) gray or (H, W, 3) RGB of the same dtype."""
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    top = np.float32(255 if arr.dtype == np.uint8 else 65535)
    a = arr[..., -1:].astype(np.float32) / top
    out = np.clip(arr[..., :-1].astype(np.float32) * a + top * (1 - a) + np.float32(0.5), 0, top).astype(arr.dtype)
    return out[..., 0] if arr.shape[2] == 2 else out


def shrunk_size(height: int, width: int, long_side: int) -> tuple[int, int] | None:
    """(height, width) with the long side at most ``long_side``, aspect kept; None if already small enough."""
    scale = long_side / max(height, width)
    if scale >= 1:
        return None
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(image: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink (H, W[, C]) so its long side is at most ``long_side`` (area filter; never enlarged)."""
    size = shrunk_size(*image.shape[:2], long_side)
    if size is None:
        return np.ascontiguousarray(image)
    return cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)


def _gray_and_preview(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) gray or (H, W, 3) RGB, uint8 or uint16, sRGB -> (gray (H, W) of the same dtype, the
    colour detector's (h, w, 3) uint8 preview for RGB, None for gray)."""
    if pixels.ndim == 2:
        return pixels, None
    small = shrink(pixels, PREVIEW_SIZE)
    return luma(pixels), small if small.dtype == np.uint8 else (small >> 8).astype(np.uint8)


def _pixels(img: Image.Image, samples: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, int]:
    """An upright Pillow image -> ((H, W) gray, (H, W, 3) RGB, alpha on white, or (H, W, 4) CMYK, as
    stored; bit depth).

    ``samples``: a TIFF's (bits per sample, sample format: 1 unsigned, 2 signed), for Pillow's
    mode ``I``, which holds 32-bit and signed 16-bit samples alike; (0, 0) when not known.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img, dtype=np.uint16), 16
    if mode == "I":
        # Pillow's 32-bit signed integers: 16-bit scans stored wide (older Pillows read 16-bit PNGs
        # so), or a TIFF's 32-bit or signed 16-bit samples, which :func:`_integer_samples` names.
        arr = np.asarray(img, dtype=np.int32)
        unsigned32, signed16 = samples == (32, 1), samples == (16, 2)
        if unsigned32:
            arr = arr.view(np.uint32)  # Pillow keeps the bits: counts past 2**31 read negative
        peak = int(arr.max(initial=0))
        top = 32767 if signed16 else 65535 if peak <= 65535 else (1 << 32) - 1 if unsigned32 else (1 << 31) - 1
        scaled = np.clip(arr.astype(np.float64), 0, None) * (65535 / top) + 0.5
        return np.clip(scaled, 0, 65535).astype(np.uint16), 16
    if mode == "F":
        # Float scans come as [0, 1], as Pillow's own [0, 255] (mode L converted), or as 16-bit
        # counts; the largest value says which.
        arr = np.asarray(img, dtype=np.float32)
        peak = arr.max(initial=0.0)
        top = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
        return np.clip(arr / top * 65535.0 + 0.5, 0, 65535).astype(np.uint16), 16
    if mode in ("1", "L") and "transparency" not in img.info:
        return np.asarray(img.convert("L"), dtype=np.uint8), 8
    if mode in ("1", "L", "LA", "La"):  # a gray level marked transparent (PNG's tRNS) goes on white, as alpha does
        return _on_white(np.asarray(img.convert("LA"), dtype=np.uint8)), 8
    if mode == "CMYK":  # as stored (Pillow undoes Adobe's inverted CMYK JPEGs): its profile makes it RGB
        return np.asarray(img, dtype=np.uint8), 8
    if mode != "RGB" or "transparency" in img.info:
        # P, RGBA, YCbCr, LAB, HSV, PA, RGBX, RGBa ...: Pillow's own conversion to RGB(A).
        has_alpha = mode.endswith(("A", "a")) or "transparency" in img.info
        has_alpha |= mode == "P" and img.palette is not None and img.palette.mode == "RGBA"
        img = img.convert("RGBA" if has_alpha else "RGB")
    return _on_white(np.asarray(img, dtype=np.uint8)), 8


class _Profile:
    """A scan's embedded ICC profile, applied to its pixels as they come decoded (:func:`icc.to_srgb`).

    One that cannot be applied (damaged; for other pixels than the scan's) leaves the pixels as they
    are, read as sRGB, and :attr:`note` says so for the scan's row. CMYK pixels without a profile
    that applies are made RGB by Pillow's conversion, which knows no inks (a profile's 50% black
    prints darker than its 50% gray).
    """

    def __init__(self, profile: bytes | None) -> None:
        self.profile = profile or None
        self.note = ""

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W) gray, (H, W, 3) RGB or (H, W, 4) CMYK as stored -> gray or RGB in sRGB, same dtype."""
        if self.profile is not None:
            try:
                return icc.to_srgb(pixels, self.profile)
            except icc.ProfileError as err:
                read = "CMYK pixels were made RGB without it" if _is_cmyk(pixels) else "pixels were read as sRGB"
                self.note = f"{err}; the {read}"
        return np.asarray(Image.fromarray(pixels, "CMYK").convert("RGB")) if _is_cmyk(pixels) else pixels


def _is_cmyk(pixels: np.ndarray) -> bool:
    return pixels.ndim == 3 and pixels.shape[2] == 4


def embedded_profile(img: Image.Image, data: bytes) -> bytes | None:
    """The ICC profile a scan's pixels are in, or None (sRGB): Pillow reads JPEG's, PNG's, TIFF's and
    WebP's; a .jp2 file's is in its colour specification box (:func:`_jp2_icc_box`). A PNG without
    one may give its tone curve in a gAMA chunk (a linear scan: 1.0), which is made a profile
    (:func:`icc.png_gamma_profile`). A camera's JPEG in Adobe RGB names it in EXIF instead
    (:func:`_dcf_adobe_rgb`)."""
    if img.format == "JPEG2000":
        if (box := _jp2_icc_box(data)) is None:
            return None
        at, size = box
        return data[at + 11 : at + size] or None
    if profile := img.info.get("icc_profile"):
        return profile
    if img.format == "PNG" and "srgb" not in img.info and isinstance(gamma := img.info.get("gamma"), float):
        chromaticity = img.info.get("chromaticity")
        return icc.png_gamma_profile(gamma, tuple(chromaticity) if chromaticity else None)
    return icc.ADOBE_RGB_PROFILE if _dcf_adobe_rgb(img) else None


def _dcf_adobe_rgb(img: Image.Image) -> bool:
    """Whether a JPEG without a profile says in EXIF that it is Adobe RGB, as cameras set to Adobe RGB
    write it (DCF 2.0's option colour space: ColorSpace "uncalibrated", interoperability index
    ``R03``), and as Photoshop and Lightroom read it. A copy stand's camera digitises prints so."""
    if img.format != "JPEG":
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": then no such claim is read
            exif = img.getexif()
            return exif.get_ifd(IFD.Exif).get(0xA001) == 0xFFFF and exif.get_ifd(IFD.Interop).get(1) == "R03"
    except Exception:  # noqa: BLE001 - damaged EXIF says nothing about the colour space
        return False


def _jp2_icc_box(data: bytes) -> tuple[int, int] | None:
    """(offset, length) of a .jp2 file's colour specification box (``colr``, ISO 15444-1 I.5.3.3) when
    it holds an ICC profile (methods 2 and 3); None when it names sRGB or greyscale (method 1),
    which need nothing, or there is none."""
    if (header := _jp2_header(data)) is None:
        return None
    at, end = header[0] + 8, header[0] + header[1]
    while at + 8 <= end:
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if size < 8:
            return None
        if kind == b"colr":  # the first is the one readers use
            return (at, size) if size > 11 and data[at + 8] in (2, 3) else None
        at += size
    return None


def _jp2_without_profile(data: bytes) -> bytes:
    """A .jp2 file whose ICC profile is replaced by the enumerated space of its components (sRGB,
    greyscale), for a decoder to hand back the stored values: imagecodecs' OpenJPEG converts a
    tagged file's pixels itself, to 8-bit RGB (16-bit gray came out as noise: seen with 2026.3.6),
    where :mod:`colorize.icc` keeps gray gray and 16 bits 16."""
    if (box := _jp2_icc_box(data)) is None or (header := _jp2_header(data)) is None:
        return data
    (at, size), (top, length) = box, header
    components = int.from_bytes(data[top + 24 : top + 26], "big")  # ihdr, first in the header box: its NC
    enumerated = b"\x00\x00\x00\x0fcolr\x01\x00\x00" + (17 if components < 3 else 16).to_bytes(4, "big")
    length += len(enumerated) - size
    return data[:top] + length.to_bytes(4, "big") + data[top + 4 : at] + enumerated + data[at + size :]


def _format(img: Image.Image) -> str:
    """The scan's format: a JPEG that carries further images (MPO: a camera's preview, a gain map,
    the other eye of a stereo pair) is a JPEG, read and written as one."""
    fmt = img.format or "unknown"
    return "JPEG" if fmt == "MPO" else fmt


def _checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (the header only), and refuse unsupported formats and images over the pixel limit."""
    img = _open(data)
    fmt = _format(img)
    if fmt not in FORMATS:
        raise ScanError(f"unsupported image format {fmt}; supported: {', '.join(FORMATS)}")
    width, height = img.size
    if width * height > max_pixels:
        raise ScanError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP (raise --max-megapixels to allow it)"
        )
    if width == 0 or height == 0:
        raise ScanError("image has no pixels")
    return img


def _describe(img: Image.Image) -> tuple[str, int, str, tuple[float, float] | None, str]:
    """What a scan's row records of an image :func:`_checked` opened, read before its pixels are.

    Returns:
        (format name, page count, original mode, dpi of the upright image, a note on pages that
        cannot be read or "").
    """
    pages, note = _pages(img)
    dpi = dpi_of(img)
    # Orientation only for a resolution to turn: reading a PNG's EXIF loads its pixels, and a fault
    # there must come from the decode that names it, not be swallowed here.
    if dpi:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": orientation then stays as is
            dpi = upright_dpi(dpi, _orientation(img))
    return _format(img), pages, img.mode, dpi, note


def _load_upright(img: Image.Image) -> Image.Image:
    """Decode the first page of an image :func:`_checked` opened and apply EXIF orientation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": orientation then stays as is
            img.seek(0)
            img.load()
            return ImageOps.exif_transpose(img) or img
    except (OSError, ValueError, SyntaxError, IndexError, EOFError) as err:
        raise _decode_error(err, "data") from None


def is_quarter_turn(orientation: object) -> bool:
    """Whether an EXIF orientation (Pillow's int, exiv2's text) turns the image a quarter (5-8):
    width and height, and the resolutions along them, trade places."""
    try:
        return int(str(orientation).strip()) in (5, 6, 7, 8)
    except ValueError:
        return False


def upright_dpi(dpi: tuple[float, float] | None, orientation: object) -> tuple[float, float] | None:
    """A stored image's (x, y) resolution as its upright image has it: after a quarter turn the
    upright image's x is the stored one's y."""
    return (dpi[1], dpi[0]) if dpi and is_quarter_turn(orientation) else dpi


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112) or 1)
    except (ValueError, TypeError, SyntaxError, OSError):  # damaged EXIF: Pillow leaves it as stored too
        return 1


def _pages(img: Image.Image) -> tuple[int, str]:
    """How many pages (frames) the file holds, and a note when some after the first cannot be read.

    The first page is what is colorized, so damage after it is a note on the row, not a failure.
    A JPEG's further images (MPO) are not pages of the scan.
    """
    if img.format == "MPO":
        return 1, ""
    try:
        return int(getattr(img, "n_frames", 1) or 1), ""
    except Exception as err:  # noqa: BLE001 - Pillow raises anything from a damaged page chain
        # Where the chain breaks cannot be told for sure (Pillow seeks to a bad page without
        # complaint), so only the first page, which is read on its own, is counted.
        why = str(err) or type(err).__name__
        return 1, f"the pages after the first cannot be counted or read: the file's chain of pages is damaged ({why})"


def _jpeg2000_pixels(data: bytes) -> tuple[np.ndarray, int]:
    """A JPEG 2000 file's pixels through imagecodecs: ((H, W) gray or (H, W, 3) RGB, alpha on white;
    bit depth).

    imagecodecs' OpenJPEG releases the GIL; Pillow's holds it (4.0 s for a 48 MP scan here, during
    which no other thread of the process runs), so readers in threads decode JPEG 2000 in
    parallel only this way. 16-bit samples stay 16-bit, colour too (Pillow reads 16-bit colour as
    8-bit), as a 48-bit TIFF's do.
    """
    try:
        arr = imagecodecs.jpeg2k_decode(_jp2_without_profile(data), numthreads=1)  # the readers are the threads
    except imagecodecs.Jpeg2kError as err:
        raise ScanError(f"corrupt or truncated image data: OpenJPEG could not decode it ({err})") from None
    bits, full = jp2_precision(data), 8 * arr.dtype.itemsize
    if bits and bits < full:  # e.g. 12-bit samples, which OpenJPEG returns as counts up to 4095
        top = (1 << bits) - 1
        arr = ((arr.astype(np.uint32) * ((1 << full) - 1) + top // 2) // top).astype(arr.dtype)
    depth = 16 if arr.dtype == np.uint16 else 8
    if arr.ndim == 2:
        return arr, depth
    if arr.shape[2] not in (2, 4):
        arr = arr[..., :3]  # further components (a fourth without an alpha's meaning) are not the picture
    return _on_white(arr), depth


def jp2_precision(data: bytes) -> int | None:
    """Bits per sample of a .jp2 file, from its image header box (``ihdr``, ISO 15444-1 I.5.3.1;
    the largest of ``bpcc``'s when the components differ); None when the file has none."""
    at = data.find(b"ihdr", 0, 4096)
    if at < 0 or len(data) < at + 16:
        return None
    bpc = data[at + 14]
    if bpc != 255:
        return (bpc & 0x7F) + 1
    at = data.find(b"bpcc", at, 4096)
    components = int.from_bytes(data[at - 4 : at], "big") - 8 if at >= 4 else 0
    return max(((b & 0x7F) + 1 for b in data[at + 4 : at + 4 + components]), default=None) if components > 0 else None


def _colour16(img: Image.Image, data: bytes) -> np.ndarray | None:
    """A 16-bit-per-channel colour TIFF or PNG ("48-bit" scans; Pillow reads them as 8-bit) as
    (H, W, 3 or 4) uint16 RGB(A), upright; None for any other image, or one that cannot be read so.
    A TIFF's fourth sample is alpha only when its ExtraSamples tag says so (associated or not).

    TIFFs by libtiff (imagecodecs): OpenCV 5.0 reads a 16-bit TIFF whose channels are stored one
    plane after another (PlanarConfiguration 2) as noise. PNGs by OpenCV.
    """
    if img.mode not in ("RGB", "RGBA"):
        return None
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)  # BitsPerSample
        if not (isinstance(bits, tuple) and max(bits, default=0) == 16):
            return None
        try:
            arr = imagecodecs.tiff_decode(data, index=0)  # the first page, as stored
        except imagecodecs.TiffError:
            return None
        if img.tag_v2.get(284) == 2 and arr.ndim == 3:  # planes: (S, H, W)
            arr = np.moveaxis(arr, 0, -1)
        extra = _first(img.tag_v2.get(338), 0) if arr.ndim == 3 and arr.shape[2] > 3 else None  # ExtraSamples
        if extra == 1:  # associated (premultiplied) alpha: straight colour again, for _on_white
            alpha = np.maximum(arr[..., 3:4].astype(np.float32), 1)
            colour = np.clip(arr[..., :3].astype(np.float32) * (65535 / alpha) + 0.5, 0, 65535)
            arr = np.concatenate([colour.astype(np.uint16), arr[..., 3:4]], axis=2)
        elif extra is not None and extra != 2:
            # Samples past RGB that are no alpha: a film scanner's infrared channel (SilverFast's
            # 64-bit HDRi), which as alpha would have washed the scan out towards white.
            arr = arr[..., :3]
    elif img.format == "PNG" and data[24:25] == b"\x10":  # IHDR's bit depth
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # no rotation
        if arr is not None and arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    else:
        return None
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(_upright(arr, _orientation(img)))


def _upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, ...) as stored -> as seen, for an EXIF orientation 1-8 (as ``ImageOps.exif_transpose``)."""
    ops = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: a.swapaxes(0, 1)[::-1],
    }  # fmt: skip
    return ops[orientation](arr) if orientation in ops else arr


def _decoded(header: Image.Image, data: bytes) -> tuple[np.ndarray, int]:
    """The first page of an image :func:`_checked` opened, upright and as stored: ((H, W) gray or
    (H, W, 3) RGB, alpha on white; bit depth)."""
    if header.format == "JPEG2000":
        return _jpeg2000_pixels(data)
    if (deep := _colour16(header, data)) is not None:  # before Pillow decodes it, to 8 bits, for nothing
        return _on_white(deep), 16
    return _pillow_pixels(header)


# libjpeg-turbo's warnings that part of a JPEG's picture is missing or garbage: data cut short (and
# an end marker after it), zeroed or damaged bytes. Pillow decodes through them in silence, filling
# the rest with gray; viewers show it broken. Others (a bad ICC marker, an unknown JFIF revision)
# leave the picture whole.
_DAMAGED_JPEG = ("premature end", "bad huffman code", "bad arithmetic code", "instead of rst")
# "N extraneous bytes before marker": the picture was complete N bytes before its data ended. A few
# are an encoder's padding; thousands are damaged data (zeroed bytes decode as short codes) read as
# a picture that ends early.
_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes")
_PADDING_BYTES = 64


def _check_jpeg_data(header: Image.Image, data: bytes) -> None:
    """Raise :class:`ScanError` when a JPEG's compressed data is damaged (:data:`_DAMAGED_JPEG`).

    Decoded again by libjpeg-turbo (simplejpeg), which reports what Pillow's decoder does not, at
    1/8 scale: all of the entropy decoding, where damage shows (``bench/jpeg_check.py``: 3.95 ms of
    ``decode_scan``'s 9.70 for a 1600x1200 gray JPEG). Not done in the GPU's JPEG lane.
    """
    if header.format not in ("JPEG", "MPO"):
        return
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, min_height=1, min_width=1)
    except ValueError as err:
        extraneous = _EXTRANEOUS.search(str(err))
        if any(sign in str(err).lower() for sign in _DAMAGED_JPEG) or (
            extraneous and int(extraneous[1]) > _PADDING_BYTES
        ):
            raise ScanError(
                f"corrupt image data: the JPEG's compressed data is damaged or cut short, so part of the "
                f"picture is missing ({err})"
            ) from None


def _integer_samples(header: Image.Image) -> tuple[int, int]:
    """A TIFF's (bits per sample, sample format) as :func:`_pixels` takes them; (0, 0) for others."""
    if header.format != "TIFF":
        return 0, 0
    return _first(header.tag_v2.get(258), 0), _first(header.tag_v2.get(339), 1)  # BitsPerSample, SampleFormat


def _first(value: object, default: int) -> int:
    """A TIFF tag's first value (Pillow gives per-sample tags as tuples), or ``default``."""
    if isinstance(value, tuple):
        value = value[0] if value else default
    return value if isinstance(value, int) else default


def _pillow_pixels(header: Image.Image) -> tuple[np.ndarray, int]:
    """Pillow's decode of an image :func:`_checked` opened, as :func:`_pixels` returns it.

    A TIFF whose zero is white (PhotometricInterpretation 0, WhiteIsZero) Pillow inverts at 8 bits
    and not at 16, where its 16-bit values would come out as a negative: they are inverted here.
    """
    white_is_zero = header.format == "TIFF" and header.mode.startswith("I;16") and header.tag_v2.get(262) == 0
    img = _load_upright(header)
    try:
        pixels, bit_depth = _pixels(img, _integer_samples(header))
    except (OSError, ValueError) as err:
        raise ScanError(f"corrupt image data: {err}") from None
    return (np.invert(pixels) if white_is_zero else pixels), bit_depth


def decode_scan(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """Decode the bytes of a scan into an upright gray array, in sRGB.

    Args:
        data: the file's bytes.
        max_pixels: refuse images with more pixels than this, before decoding them.

    Returns:
        The :class:`Scan`.

    Raises:
        ScanError: empty, not an image, unsupported format, over the pixel limit, truncated or corrupt.
    """
    header = _checked(data, max_pixels)
    if header.format == "JPEG2000":  # one page; Pillow's resolution, as the lane's
        fmt, pages, mode, dpi, note = "JPEG2000", 1, header.mode, dpi_of(header), ""
    else:
        fmt, pages, mode, dpi, note = _describe(header)
    srgb = _Profile(embedded_profile(header, data))
    pixels, bit_depth = _decoded(header, data)
    _check_jpeg_data(header, data)
    gray, preview = _gray_and_preview(srgb(pixels))
    return Scan(gray, preview, mode, bit_depth, fmt, pages, dpi, "; ".join(n for n in (note, srgb.note) if n))


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a colour image: (H, W, 3) uint8 sRGB, upright, alpha composited on white, its embedded
    ICC profile applied (one that cannot be, logged and left).

    Raises:
        ScanError: as :func:`decode_scan`.
    """
    header = _checked(data, max_pixels)
    srgb = _Profile(embedded_profile(header, data))
    pixels = srgb(_pillow_pixels(header)[0])
    _check_jpeg_data(header, data)
    if srgb.note:
        log.warning("%s", srgb.note)
    if pixels.ndim == 3:
        return pixels
    gray8 = pixels if pixels.dtype == np.uint8 else (pixels >> 8).astype(np.uint8)
    return np.repeat(gray8[..., None], 3, axis=2)


def output_format(source_format: str, requested: str) -> str:
    """The Pillow format name of the output for a source format and the ``--output-format`` choice."""
    if requested not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, not {requested!r}")
    return source_format if requested == "same" else _FORCED[requested]


def content_type(fmt: str) -> str:
    """MIME type of a Pillow format name."""
    return FORMATS[fmt][1]


def output_key(source_key: str, source_format: str, fmt: str) -> str:
    """Destination key: the source's relative path, with the extension changed only when the format is."""
    if fmt == source_format:
        return source_key
    stem, dot, _ = source_key.rpartition(".")
    return (stem if dot else source_key) + FORMATS[fmt][0]


# The largest side each format's files can record (JPEG's SOF and WebP's header fields).
_MAX_SIDE = {"JPEG": 65_535, "WEBP": 16_383}


def check_output_size(fmt: str, width: int, height: int) -> None:
    """Raise :class:`ScanError` when a ``fmt`` file cannot hold an image of this size."""
    if (limit := _MAX_SIDE.get(fmt)) and max(width, height) > limit:
        raise ScanError(
            f"a {fmt} cannot hold an image over {limit:,} pixels a side (this one is {width}x{height}); "
            "use --output-format png or tiff"
        )


def encode_image(rgb: np.ndarray, fmt: str, dpi: tuple[float, float] | None = None) -> bytes:
    """Encode an RGB image.

    Args:
        rgb: (H, W, 3) uint8, or uint16 (then TIFF, PNG and JPEG 2000 keep 16 bits; JPEG, WebP
            and BMP, which cannot hold them, get the top 8 bits).
        fmt: Pillow format name, one of :data:`FORMATS`.
        dpi: resolution to record, when the format can hold it.

    Returns:
        The encoded file's bytes.
    """
    check_output_size(fmt, rgb.shape[1], rgb.shape[0])
    if fmt == "JPEG2000":
        return _encode_jpeg2000(rgb, dpi)
    if rgb.dtype == np.uint16 and fmt not in ("TIFF", "PNG"):
        rgb = (rgb >> 8).astype(np.uint8)
    if fmt in ("JPEG", "TIFF") or rgb.dtype == np.uint16:
        return _encode_opencv(rgb, fmt, dpi)
    img = Image.fromarray(rgb, "RGB")
    buf = io.BytesIO()
    options: dict[str, object] = {}
    if dpi and fmt in ("PNG", "BMP"):
        options["dpi"] = dpi
    if fmt == "PNG":
        options.update(compress_level=4)
    elif fmt == "WEBP":
        options.update(quality=JPEG_QUALITY, method=4)
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def set_jpeg_dpi(data: bytes, dpi: tuple[float, float] | None) -> bytes:
    """Record a resolution in a JPEG's JFIF header (APP0), adding the header if the encoder wrote none.

    For encoders that take no resolution (nvJPEG). ``dpi`` None records none (units 0, aspect 1:1),
    as Pillow writes when it is given none.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG: no start-of-image marker")
    unit, (x, y) = (1, (min(65535, max(1, round(v))) for v in dpi)) if dpi else (0, (1, 1))  # 1: dots per inch
    density = bytes([unit]) + x.to_bytes(2, "big") + y.to_bytes(2, "big")
    if data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\x00":
        return data[:13] + density + data[18:]
    return data[:2] + b"\xff\xe0\x00\x10JFIF\x00\x01\x01" + density + b"\x00\x00" + data[2:]


def _encode_jpeg2000(rgb: np.ndarray, dpi: tuple[float, float] | None) -> bytes:
    """A lossless .jp2 file (the container holds the provenance XMP), 8 or 16 bits as given, with
    the resolution recorded when there is one.

    imagecodecs (OpenJPEG): the reversible wavelet and colour transform, 16 bits kept, and the GIL
    released. Pillow's encoder holds the GIL (8.8 s for a 48 MP RGB output here: every other
    thread of the process waits) and writes no 16-bit colour; OpenCV's keeps 16 bits but applies
    no colour transform (files 52% larger). Figures: ``bench/jp2_codec.py``, in bench/RESULTS.md.
    Neither library writes a resolution.
    """
    data = bytes(imagecodecs.jpeg2k_encode(rgb, codecformat="jp2", reversible=True, mct=True, numthreads=1))
    return with_jp2_resolution(data, dpi) if dpi else data


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def _jp2_ratio(dpi: float) -> tuple[int, int, int]:
    """Dots per inch as a JP2 resolution, pixels per metre = N / D * 10**E (N, D 16-bit, E 8-bit)."""
    per_metre, exponent = dpi / 0.0254, 0
    while per_metre > 65535:
        per_metre, exponent = per_metre / 10, exponent + 1
    denominator = max(1, min(65535, int(65535 // per_metre)))  # as many digits as 16 bits hold
    return round(per_metre * denominator), denominator, exponent


def _jp2_header(data: bytes) -> tuple[int, int] | None:
    """(offset, length) of a .jp2 file's header box (``jp2h``); None when it has none of a plain
    32-bit length (not a .jp2 file)."""
    at = 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if size < 8:
            return None  # 0 (to the end of the file) or 1 (a 64-bit length): never the header box
        if kind == b"jp2h":
            return at, size
        at += size
    return None


def with_jp2_resolution(data: bytes, dpi: tuple[float, float]) -> bytes:
    """A .jp2 file with a capture-resolution box (``res `` holding ``resc``, ISO 15444-1 I.5.3.7)
    added to its header box, which is where Pillow, exiv2 and others read a JP2's resolution.

    Unchanged when the file has no header box of a plain 32-bit length (not a .jp2 file).
    """
    if (header := _jp2_header(data)) is None:
        return data
    at, size = header
    (hn, hd, he), (vn, vd, ve) = _jp2_ratio(dpi[0]), _jp2_ratio(dpi[1])
    res = _box(b"res ", _box(b"resc", struct.pack(">HHHHBB", vn, vd, hn, hd, ve, he)))
    end = at + size
    return data[:at] + (size + len(res)).to_bytes(4, "big") + data[at + 4 : end] + res + data[end:]


def _encode_opencv(rgb: np.ndarray, fmt: str, dpi: tuple[float, float] | None) -> bytes:
    """(H, W, 3) RGB -> a JPEG or TIFF (uint8), or a TIFF or PNG (uint16), with the resolution recorded.

    OpenCV, not Pillow: Pillow writes no 16-bit RGB, and its JPEG and TIFF encoders hold the GIL, so
    writer threads took turns. The same pixels either way; on 2 cores two threads encoding ran
    1.15-1.16x one with Pillow's JPEG encoder, 1.90-1.95x with OpenCV's; an 8-bit 1600x1200 deflate
    TIFF took 261-282 ms with Pillow, two threads 0.98-1.04x one, and 136-138 ms with OpenCV,
    1.97-2.01x (``python bench/encoders.py``).
    """
    if fmt == "JPEG":
        # OpenCV's 4:2:0 subsampling loses nothing here: the model's chroma is smooth by construction.
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    elif fmt == "PNG":
        ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 4]
    else:
        # 16 bits uncompressed: 16-bit scan data is grain down to its low bits, so deflate saved
        # about 1% of the size at 30x the time (measured on a 2400x1800 scan); masters are often
        # kept so. 8 bits: deflate (libtiff's ADOBE_DEFLATE, 8).
        ext, params = ".tif", [cv2.IMWRITE_TIFF_COMPRESSION, 1 if rgb.dtype == np.uint16 else 8]
        if dpi:
            params += [
                cv2.IMWRITE_TIFF_RESUNIT,
                2,  # inches
                cv2.IMWRITE_TIFF_XDPI,
                round(dpi[0]),
                cv2.IMWRITE_TIFF_YDPI,
                round(dpi[1]),
            ]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ScanError(f"OpenCV could not encode a {rgb.itemsize * 8}-bit {fmt}")
    data = buf.tobytes()
    if fmt == "JPEG":
        return set_jpeg_dpi(data, dpi)
    return with_png_dpi(data, dpi) if fmt == "PNG" and dpi else data


def with_png_dpi(data: bytes, dpi: tuple[float, float]) -> bytes:
    """A PNG with its resolution recorded: a ``pHYs`` chunk (pixels per metre) after the header.

    For encoders that take no resolution (OpenCV's). Unchanged when ``data`` has no IHDR chunk first.
    """
    per_metre = struct.pack(">IIB", *(max(1, round(v / 0.0254)) for v in dpi), 1)  # unit 1: the metre
    return with_png_chunk(data, b"pHYs", per_metre)


def with_png_chunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """A PNG with a chunk of this type (``pHYs``, ``iCCP``, ...) right after its header chunk.

    Unchanged when ``data`` has no IHDR chunk first.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return data
    at = 8 + 8 + int.from_bytes(data[8:12], "big") + 4  # past the IHDR chunk: length, type, data, CRC
    body = kind + payload
    return data[:at] + len(payload).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big") + data[at:]
