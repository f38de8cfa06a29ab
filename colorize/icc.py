"""Embedded colour profiles: a scan's pixels turned into the sRGB values the rest of the code assumes.

Scanners and archive workflows tag scans with ICC profiles: Gray Gamma 2.2, Gray Gamma 1.8 or Dot
Gain 20% on gray scans, Adobe RGB on colour-mode ones. A stored number then stands for another tone
than sRGB's (mid-gray 128 of Gray Gamma 1.8 is sRGB's 146), so a scan read as sRGB would come out of
the pipeline lighter or darker than a colour-managed viewer shows the scan itself. Pixels are
converted by LittleCMS (imagecodecs' binding), relative colorimetric with black-point compensation,
as an editor's "Convert to Profile" does. Most tagged files carry sRGB itself: each distinct profile
is checked once, and those cost nothing after.

Gray is converted through a table per profile and bit depth (every gray level converted once), so
a 16-bit 200 MP scan costs one lookup per pixel; RGB and CMYK pixels are converted whole.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import imagecodecs
import numpy as np

from colorize.color import luma, srgb_to_linear

# LittleCMS's own sRGB profile (ICC v4.4, 588 bytes): what pixels are converted to, and what every
# output that can hold a profile carries (:mod:`colorize.provenance`).
SRGB_PROFILE: bytes = imagecodecs.cms_profile("srgb")
# Adobe RGB (1998), for a camera's JPEG that names it in EXIF instead of embedding it (DCF's option
# colour space; :func:`colorize.imaging.embedded_profile`). LittleCMS's converts a cube of colours as
# a real Adobe RGB (1998) profile from a photo's file does, to the level.
ADOBE_RGB_PROFILE: bytes = imagecodecs.cms_profile("adobergb")
_INTENT = int(imagecodecs.CMS.INTENT.RELATIVE_COLORIMETRIC)
_FLAGS = int(imagecodecs.CMS.FLAGS.BLACKPOINTCOMPENSATION)
# LittleCMS's optimised 16-bit pipelines are off by up to 1.2% of full scale (775 of 65535 on
# near-gray Adobe RGB pixels, against its float one: ``bench/colour_profiles.py``): 8-bit precision. Tables are
# built unoptimised (exact to a 16-bit level, and built once per profile); 16-bit RGB pixels go
# through its float pipeline, in strips of this many rows, which bound its float32 copies.
_EXACT = _FLAGS | int(imagecodecs.CMS.FLAGS.NOOPTIMIZE)
_STRIP_ROWS = 256
# A profile whose conversion moves no value by more than this many 8-bit levels is sRGB's (the
# compact and vendor copies of sRGB measure 0 or 1 here: rounding in their tables).
_SAME_LEVELS = 1
# A PNG's gAMA chunk of 1/2.2 (45455) is what writers of sRGB images put there (the PNG specification
# asks them to, beside the sRGB chunk, for decoders that know only gAMA; libpng treats it as sRGB's
# curve): decoding exponents in this range are read as sRGB, not as a pure power.
_SRGB_EXPONENTS = (2.15, 2.25)
_BT709_PRIMARIES = (0.64, 0.33, 1.0, 0.30, 0.60, 1.0, 0.15, 0.06, 1.0)  # sRGB's, as (x, y, Y) each
_D65 = (0.3127, 0.3290, 1.0)


class ProfileError(Exception):
    """A profile that cannot be applied. ``str(err)`` says why, for the manifest row's reason."""


def space(profile: bytes) -> str:
    """The colour space a profile's pixels are in, from its header: ``GRAY``, ``RGB``, ``CMYK``, ...;
    "" for bytes that are no ICC profile (no ``acsp`` signature)."""
    if len(profile) < 128 or profile[36:40] != b"acsp":
        return ""
    return profile[16:20].decode("latin-1").strip()


@lru_cache(maxsize=32)
def png_gamma_profile(file_gamma: float, chromaticity: tuple[float, ...] | None = None) -> bytes | None:
    """The RGB profile a PNG's gAMA chunk (and cHRM, when there is one) describes, for a PNG with
    neither an iCCP nor an sRGB chunk, which take precedence (PNG specification, 11.3.3).

    Args:
        file_gamma: gAMA's value, e.g. 0.45455, 1.0 for linear light (Pillow's ``info["gamma"]``).
        chromaticity: cHRM's white point and primaries, (wx, wy, rx, ry, gx, gy, bx, by); None for
            sRGB's.

    Returns:
        The profile's bytes (an RGB profile, which :func:`gray_table` also takes for gray pixels);
        None when the curve is sRGB's (:data:`_SRGB_EXPONENTS`) and the primaries are too, or the
        gamma is no usable number.
    """
    if not 0.01 <= file_gamma <= 100:
        return None
    exponent = 1.0 / file_gamma
    srgb_curve = _SRGB_EXPONENTS[0] <= exponent <= _SRGB_EXPONENTS[1]
    if srgb_curve and chromaticity is None:
        return None
    white, primaries = _D65, _BT709_PRIMARIES
    if chromaticity is not None and len(chromaticity) == 8 and all(0 < v < 1 for v in chromaticity):
        wx, wy, rx, ry, gx, gy, bx, by = chromaticity
        white, primaries = (wx, wy, 1.0), (rx, ry, 1.0, gx, gy, 1.0, bx, by, 1.0)
    curve = {"transferfunction": _srgb_curve()} if srgb_curve else {"gamma": exponent}
    return imagecodecs.cms_profile("rgb", whitepoint=white, primaries=primaries, **curve)


@lru_cache(maxsize=1)
def _srgb_curve() -> np.ndarray:
    """sRGB's decoding curve (IEC 61966-2-1) as a 4096-entry uint16 table: stored value -> linear light."""
    return np.round(srgb_to_linear(np.linspace(0.0, 1.0, 4096)) * 65535).astype(np.uint16)


def _wrong_space(kind: str, pixels: str) -> str:
    if not kind:
        return "its embedded ICC profile cannot be read: damaged or not a profile"
    return f"its embedded ICC profile is for {kind} pixels, not {pixels} ones: not applied"


def _transform(pixels: np.ndarray, profile: bytes, colorspace: str, flags: int = _FLAGS) -> np.ndarray:
    """LittleCMS: ``pixels`` in ``profile``'s space -> sRGB (..., 3) of the same dtype."""
    try:
        return imagecodecs.cms_transform(
            pixels, profile, SRGB_PROFILE, colorspace=colorspace, outcolorspace="rgb", intent=_INTENT, flags=flags
        )
    except imagecodecs.CmsError as err:
        raise ProfileError(f"its embedded ICC profile cannot be applied: damaged or not a profile ({err})") from None


@lru_cache(maxsize=32)
def gray_table(profile: bytes, bit_depth: int) -> np.ndarray | None:
    """The sRGB gray level of every gray level a profile describes; None when they are sRGB's.

    Args:
        profile: an ICC profile for gray pixels, or for RGB ones (a gray image is then neutral RGB).
        bit_depth: 8 or 16.

    Returns:
        (2**bit_depth,) uint8 or uint16 table, read-only; None when no level moves by more than
        :data:`_SAME_LEVELS` (in 8-bit levels).

    Raises:
        ProfileError: damaged, or for another colour space (CMYK, Lab, ...).
    """
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    ramp = np.arange(1 << bit_depth, dtype=dtype).reshape(-1, 256)
    kind = space(profile)
    if kind == "GRAY":
        rgb = _transform(ramp, profile, "gray", _EXACT)
    elif kind == "RGB":
        rgb = _transform(np.repeat(ramp[..., None], 3, axis=2), profile, "rgb", _EXACT)
    else:
        raise ProfileError(_wrong_space(kind, "gray"))
    table = luma(np.ascontiguousarray(rgb)).reshape(-1)
    same = _SAME_LEVELS * (1 if bit_depth == 8 else 257)
    if int(np.abs(table.astype(np.int32) - ramp.reshape(-1)).max()) <= same:
        return None
    table.setflags(write=False)
    return table


def is_srgb(profile: bytes) -> bool:
    """Whether an RGB profile is sRGB's: converts a 17-step cube of colours to within
    :data:`_SAME_LEVELS` of themselves.

    Raises:
        ProfileError: damaged, or not for RGB pixels.
    """
    if space(profile) != "RGB":
        raise ProfileError(_wrong_space(space(profile), "RGB"))
    return _rgb_is_srgb(profile)


@lru_cache(maxsize=32)
def _rgb_is_srgb(profile: bytes) -> bool:
    steps = np.linspace(0, 255, 17).round().astype(np.uint8)
    cube = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(1, -1, 3)
    return int(np.abs(_transform(cube, profile, "rgb").astype(np.int32) - cube).max()) <= _SAME_LEVELS


def to_srgb(pixels: np.ndarray, profile: bytes) -> np.ndarray:
    """A scan's pixels, in the space its embedded profile describes, as sRGB.

    Args:
        pixels: (H, W) gray, (H, W, 3) RGB, uint8 or uint16; or (H, W, 4) CMYK uint8 (0: no ink).
        profile: the ICC profile's bytes.

    Returns:
        The same shape and dtype in sRGB, (H, W, 3) for CMYK; ``pixels`` itself when the profile
        is sRGB's.

    Raises:
        ProfileError: damaged, or for pixels of another kind (a CMYK profile on RGB, a gray one on RGB).
    """
    bit_depth = 8 if pixels.dtype == np.uint8 else 16
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        if space(profile) != "CMYK":
            raise ProfileError(_wrong_space(space(profile), "CMYK"))
        return _transform(np.ascontiguousarray(pixels), profile, "cmyk")
    if pixels.ndim == 2:
        table = gray_table(profile, bit_depth)
        if table is None:
            return pixels
        return cv2.LUT(pixels, table) if bit_depth == 8 else np.take(table, pixels)
    if is_srgb(profile):
        return pixels
    if pixels.dtype == np.uint8:
        return _transform(np.ascontiguousarray(pixels), profile, "rgb")
    out = np.empty_like(pixels)
    for top in range(0, pixels.shape[0], _STRIP_ROWS):
        strip = pixels[top : top + _STRIP_ROWS].astype(np.float32) / np.float32(65535)
        srgb = _transform(strip, profile, "rgb")
        out[top : top + _STRIP_ROWS] = np.clip(srgb * np.float32(65535) + np.float32(0.5), 0, 65535)
    return out
