"""Colour maths: CIE Lab conversions and the model's value normalisations.

Pure functions on numpy arrays, no I/O. Conventions used everywhere in the project:

* gray / RGB pixel values are sRGB-encoded; as floats they lie in [0, 1];
* ``L`` is CIE lightness in [0, 100]; ``ab`` are CIE a*, b* in about [-110, 110] for sRGB colours;
* the model sees ``L / 50 - 1`` in [-1, 1] and predicts ``ab / 110`` in [-1, 1] (``lab`` mode), or
  the source notebook's per-channel normalised RGB (``rgb`` mode, see :data:`NOTEBOOK_NORMALIZATION`).

OpenCV does the full-resolution conversions: it is about 25x faster than scikit-image's float64 path
and applies the same sRGB transfer curve and D65 white point.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

L_SCALE = 50.0
AB_SCALE = 110.0

# Rows per strip when merging at full resolution: bounds the float32 temporaries of a 200 MP scan
# to a few tens of MB instead of gigabytes, and keeps each strip in cache.
_MERGE_STRIP_ROWS = 256
# The guided filter that carries the model's chroma to full resolution along the scan's own edges
# (:func:`chroma_guide`): its window radius in model-size pixels and its regulariser in (L units)^2.
# Chosen on the starter set's training split (MODEL_CARD.md): radius 8 and 25 measured best of
# radii 2-16 and regularisers 25-400; 0 radius turns it off (plain bicubic upsampling).
GUIDE_RADIUS = 8
GUIDE_EPS = 25.0
# Names how outputs get their full-resolution colour from a model's chroma, in every manifest row
# that made one. Change it whenever the code changes the colours a model's outputs get, so that
# ``--redo-older`` remakes outputs made the older way. Rows from before it was recorded have "":
# those outputs had the chroma upsampled bicubic, or guided as now. ``-icc``: scans' embedded colour
# profiles applied (:mod:`colorize.icc`); ``guided-8-25`` outputs read every scan as sRGB, which
# for an untagged or sRGB-tagged scan gives the same output.
COLOUR_METHOD = f"guided-{GUIDE_RADIUS}-{GUIDE_EPS:g}-icc"

NOTEBOOK_NORMALIZATION: dict[str, list[float]] = {
    "color_mean": [0.58090717, 0.52688643, 0.45678478],
    "color_std": [0.25644188, 0.25482641, 0.24456465],
    "gray_mean": [0.5350533, 0.5350533, 0.5350533],
    "gray_std": [0.25051587, 0.25051587, 0.25051587],
}
LAB_NORMALIZATION: dict[str, float] = {"l_scale": L_SCALE, "ab_scale": AB_SCALE}


def normalize_l(lightness: np.ndarray) -> np.ndarray:
    """L in [0, 100] -> model input in [-1, 1]. Any shape, float32."""
    return (lightness / L_SCALE - 1.0).astype(np.float32, copy=False)


def denormalize_l(x: np.ndarray) -> np.ndarray:
    """Model-space L in [-1, 1] -> L in [0, 100]. Inverse of :func:`normalize_l`."""
    return ((x + 1.0) * L_SCALE).astype(np.float32, copy=False)


def normalize_ab(ab: np.ndarray) -> np.ndarray:
    """ab in about [-110, 110] -> model target in about [-1, 1]. Any shape, float32."""
    return (ab / AB_SCALE).astype(np.float32, copy=False)


def denormalize_ab(x: np.ndarray) -> np.ndarray:
    """Model output in [-1, 1] -> ab in [-110, 110]. Inverse of :func:`normalize_ab`."""
    return (x * AB_SCALE).astype(np.float32, copy=False)


def max_value(bit_depth: int) -> int:
    """Largest code value of an unsigned integer image of ``bit_depth`` bits (8 -> 255, 16 -> 65535)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, not {bit_depth}")
    return (1 << bit_depth) - 1


def gray_to_lightness(gray: np.ndarray) -> np.ndarray:
    """CIE L of neutral sRGB gray levels.

    Args:
        gray: float array of any shape, sRGB-encoded gray in [0, 1].

    Returns:
        float32 array of the same shape, L in [0, 100].
    """
    g = np.asarray(gray, dtype=np.float32)
    flat = np.repeat(g.reshape(1, -1, 1), 3, axis=2)  # (1, N, 3): neutral RGB
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab)[0, :, 0].reshape(g.shape)


_DELTA = 6.0 / 29.0


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """sRGB's decoding curve (IEC 61966-2-1): stored values in [0, 1] -> linear light in [0, 1]."""
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _lightness_exact(gray: np.ndarray) -> np.ndarray:
    """L of neutral sRGB gray in [0, 1] by the CIE formulas in float64 (any shape)."""
    y = srgb_to_linear(np.asarray(gray, dtype=np.float64))
    return np.where(y > _DELTA**3, 116.0 * np.cbrt(y) - 16.0, y * (116.0 / (3 * _DELTA**2)))


def _lab_to_rgb_exact(lab: np.ndarray) -> np.ndarray:
    """Lab (H, W, 3) float32 -> sRGB float32 in [0, 1], precise enough for 16 bits.

    OpenCV's Lab->RGB interpolates the sRGB curve from a table and is off by up to 2e-3: invisible
    at 8 bits, 7 lost bits at 16. Its Lab->linear RGB has no such table, so only the sRGB curve is
    applied here, by its formula (within 2 codes of 65535 of the float64 CIE formulas).
    """
    linear = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2LRGB), 0.0, 1.0)
    return np.where(
        linear <= np.float32(0.0031308),
        linear * np.float32(12.92),
        np.float32(1.055) * np.power(linear, np.float32(1 / 2.4)) - np.float32(0.055),
    )


@lru_cache(maxsize=2)
def lightness_lut(bit_depth: int) -> np.ndarray:
    """Look-up table from integer gray code to L: float32, shape (2**bit_depth,), values in [0, 100].

    A gray scan has a* = b* = 0, so its L is a function of the gray level alone: one table lookup
    replaces a full-resolution colour conversion.
    """
    top = max_value(bit_depth)
    levels = np.arange(top + 1, dtype=np.float32) / top
    # 8-bit goes through OpenCV both ways (fast, exact to the level); 16-bit through the exact formulas.
    lut = gray_to_lightness(levels) if bit_depth == 8 else _lightness_exact(levels).astype(np.float32)
    lut.setflags(write=False)
    return lut


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma of an RGB image, the gray that colour-to-gray conversions conventionally keep.

    Args:
        rgb: (H, W, 3) uint8 or uint16, sRGB.

    Returns:
        (H, W) array of the same dtype.
    """
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB float in [0, 1], shape (..., H, W, 3) -> Lab float32 of the same shape (L in [0, 100])."""
    x = np.ascontiguousarray(rgb, dtype=np.float32)
    if x.ndim == 3:
        return cv2.cvtColor(x, cv2.COLOR_RGB2Lab)
    return np.stack([cv2.cvtColor(img, cv2.COLOR_RGB2Lab) for img in x])


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab float, shape (..., H, W, 3) -> sRGB float32 in [0, 1], clipped to the gamut."""
    x = np.ascontiguousarray(lab, dtype=np.float32)
    if x.ndim == 3:
        out = cv2.cvtColor(x, cv2.COLOR_Lab2RGB)
    else:
        out = np.stack([cv2.cvtColor(img, cv2.COLOR_Lab2RGB) for img in x])
    return np.clip(out, 0.0, 1.0, out=out)


def to_integer(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float image in [0, 1] (values outside are clipped) -> uint8 or uint16, rounded to nearest."""
    x = np.clip(rgb, 0.0, 1.0)
    if bit_depth == 8:
        return cv2.convertScaleAbs(x, alpha=255.0)  # rounds and saturates in one C++ pass
    return (x * float(max_value(bit_depth)) + 0.5).astype(np.uint16)


def upsample_ab(ab: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize chroma smoothly (bicubic) to a full-resolution size.

    Args:
        ab: (h, w, 2) float32 chroma.
        height, width: the target size.

    Returns:
        (height, width, 2) float32.
    """
    return cv2.resize(ab, (width, height), interpolation=cv2.INTER_CUBIC)


def despeckle_ab(ab: np.ndarray, k: int) -> np.ndarray:
    """Median filter of side ``k`` over model-size chroma: removes isolated specks of colour.

    A small generator puts speckled, mixed chroma on textured surfaces (fur, grass, gravel); true
    chroma is smooth at the model's 256x256, so a median removes the specks and keeps colour edges.
    Values are rounded to whole ab units first (OpenCV's larger medians work on 8 bits; 1 unit is
    under half a just-noticeable difference).

    Args:
        ab: (..., S, S, 2) float32 chroma, values within [-128, 127].
        k: the window's side, odd; 1 or less returns ``ab`` as it is.

    Returns:
        Same shape, float32.
    """
    if k <= 1:
        return ab
    flat = ab.reshape(-1, *ab.shape[-3:])
    codes = np.clip(np.rint(flat) + 128.0, 0, 255).astype(np.uint8)
    out = np.empty(flat.shape, dtype=np.float32)
    for i, img in enumerate(codes):
        for c in range(2):
            out[i, ..., c] = cv2.medianBlur(np.ascontiguousarray(img[..., c]), k)
    return (out - 128.0).reshape(ab.shape)


def chroma_guide(
    lightness: np.ndarray, ab: np.ndarray, radius: int = GUIDE_RADIUS, eps: float = GUIDE_EPS
) -> np.ndarray:
    """Chroma as a local linear function of lightness (He, Sun & Tang's guided filter, 2010/2015).

    In each window the chroma is fitted as ``slope * L + offset``; upsampled and applied to the
    scan's full-resolution L, the fit puts the colour edges where the scan's own edges are, where
    plain upsampling lets them bleed by a model pixel or more (a beige halo of the tower's colour
    over the sky around a lattice tower). Where chroma does not follow lightness (texture, noise)
    the slope is near 0 and the chroma stays as smooth as the model made it.

    Args:
        lightness: (h, w) float32 L in [0, 100], the gray at the chroma's size.
        ab: (h, w, 2) float32 chroma.
        radius: window radius, in these pixels.
        eps: regulariser, (L units)^2: lightness steps much smaller than its root carry no colour edge.

    Returns:
        (h, w, 4) float32: slope of a, slope of b, offset of a, offset of b (window-averaged).
    """
    side = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, side, borderType=cv2.BORDER_REFLECT_101)

    mean_l = box(lightness)[..., None]
    mean_ab = box(ab)
    var_l = box(lightness * lightness)[..., None] - mean_l * mean_l
    cov = box(ab * lightness[..., None]) - mean_l * mean_ab
    slope = cov / (var_l + eps)
    return box(np.concatenate([slope, mean_ab - slope * mean_l], axis=-1))


def shrink_gray(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """A scan's gray reduced (area average) to the model's size.

    Args:
        gray: (H, W) uint8 or uint16 sRGB gray.

    Returns:
        (height, width) float32 gray in [0, 1].
    """
    bit_depth = 16 if gray.dtype == np.uint16 else 8
    return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / max_value(bit_depth)


def merge_chroma(
    gray: np.ndarray, ab: np.ndarray, small: np.ndarray | None = None, guide_radius: int = GUIDE_RADIUS
) -> np.ndarray:
    """Put model chroma on the scan's own luminance, at the scan's own resolution.

    The scan's L is taken exactly from its gray levels, only the chroma is upsampled, so every
    detail of the scan survives; L of the output differs from the scan's only where the colour
    falls outside the sRGB gamut and is clipped. The chroma is upsampled along the scan's edges
    (:func:`chroma_guide`), or bicubic when ``guide_radius`` is 0.

    Args:
        gray: (H, W) uint8 or uint16, the scan's sRGB gray levels.
        ab: (h, w, 2) float32 chroma, any size (usually 256x256); resized to (H, W) here.
        small: (h, w) float32 gray in [0, 1], :func:`shrink_gray` of ``gray`` to ``ab``'s size (the
            model's input, when the caller has it); made here when None.
        guide_radius: :func:`chroma_guide`'s window radius, in ``ab``'s pixels; 0 for bicubic.

    Returns:
        (H, W, 3) RGB of the same dtype as ``gray``.
    """
    bit_depth = 16 if gray.dtype == np.uint16 else 8
    if gray.dtype not in (np.uint8, np.uint16) or gray.ndim != 2:
        raise ValueError(f"gray must be a 2-D uint8 or uint16 array, got {gray.dtype} {gray.shape}")
    height, width = gray.shape
    lut = lightness_lut(bit_depth)
    # A window wider than the chroma itself has nothing to fit (tiny test chroma): fewer pixels, then none.
    guide_radius = min(guide_radius, (min(ab.shape[:2]) - 1) // 2)
    if guide_radius > 0:
        small = shrink_gray(gray, *ab.shape[:2]) if small is None else small
        guide = chroma_guide(gray_to_lightness(small), ab, guide_radius)
        # Linear is enough for the window-averaged fit. As planes, the fit is applied by one
        # accumulateProduct per channel in place, which made the guided merge cost what the bicubic one did.
        slope_a, slope_b, a_full, b_full = (
            cv2.resize(np.ascontiguousarray(guide[..., c]), (width, height), interpolation=cv2.INTER_LINEAR)
            for c in range(4)
        )
    else:
        ab_full = upsample_ab(ab, height, width)
    out = np.empty((height, width, 3), dtype=gray.dtype)
    for top in range(0, height, _MERGE_STRIP_ROWS):
        rows = slice(top, min(top + _MERGE_STRIP_ROWS, height))
        # OpenCV's LUT and merge: 4x and 4.5x faster than numpy's indexing and strided copies here.
        lightness = cv2.LUT(gray[rows], lut.reshape(1, -1)) if bit_depth == 8 else lut[gray[rows]]
        if guide_radius > 0:  # offset += slope * L: a and b of these rows
            a_rows, b_rows = a_full[rows], b_full[rows]
            cv2.accumulateProduct(slope_a[rows], lightness, a_rows)
            cv2.accumulateProduct(slope_b[rows], lightness, b_rows)
            lab = cv2.merge([lightness, a_rows, b_rows])
        else:
            lab = cv2.merge([lightness, ab_full[rows]])
        if bit_depth == 8:
            # OpenCV's float Lab->RGB already clips to [0, 1] (its sRGB table does), so no np.clip pass.
            out[rows] = cv2.convertScaleAbs(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), alpha=255.0)
        else:
            out[rows] = to_integer(_lab_to_rgb_exact(lab), bit_depth)
    return out


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness of one image, in the |rg| / |yb| form.

    The form recent colorization papers use (and the common reference implementations):
    on 0-255 values, ``rg = |R - G|`` and ``yb = |(R + G) / 2 - B|``, then
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)``.
    The paper itself uses the signed opponent channels; the absolute form makes the mean term count
    colour of any hue, which is what "how colourful" means when comparing to ground truth.

    Args:
        rgb: (H, W, 3) float in [0, 1], or uint8.

    Returns:
        M, 0 for a gray image and roughly 20-110 for photographs.
    """
    x = rgb.astype(np.float64)
    if rgb.dtype != np.uint8:
        x = x * 255.0
    rg = np.abs(x[..., 0] - x[..., 1])
    yb = np.abs(0.5 * (x[..., 0] + x[..., 1]) - x[..., 2])
    spread = np.sqrt(rg.std() ** 2 + yb.std() ** 2)
    mean = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * mean)
