"""The colour maths of :mod:`colorize.color` on torch tensors, for scans that stay on the GPU.

Pure functions, no I/O; they run on any device (the tests compare them with the OpenCV path on a
CPU). The conventions are :mod:`colorize.color`'s: L in [0, 100], ab in about [-110, 110], sRGB
values in [0, 1] as floats. OpenCV's constants are used (D65 white, its XYZ <-> RGB matrix), so
the two paths agree to a code value or so (tested).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from colorize.color import GUIDE_EPS, GUIDE_RADIUS, lightness_lut

_WHITE_X, _WHITE_Z = 0.950456, 1.088754  # OpenCV's D65 white point (Y = 1)
_XYZ_TO_RGB = (
    (3.240479, -1.53715, -0.498535),
    (-0.969256, 1.875991, 0.041556),
    (0.055648, -0.204043, 1.057311),
)
_DELTA = 6.0 / 29.0
_KAPPA = 24389.0 / 27.0  # CIE: L = kappa * Y below the linear segment's end


def srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light, any shape, float32."""
    return torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] -> sRGB-encoded values, any shape, float32."""
    return torch.where(v <= 0.0031308, v * 12.92, 1.055 * v.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def gray_to_lightness(gray: torch.Tensor) -> torch.Tensor:
    """CIE L of neutral sRGB gray levels: float gray in [0, 1], any shape -> L in [0, 100]."""
    y = srgb_to_linear(gray.float())
    return torch.where(y > _DELTA**3, 116.0 * y.clamp_min(_DELTA**3) ** (1 / 3) - 16.0, _KAPPA * y)


@lru_cache(maxsize=8)
def _lightness_lut_on(device: torch.device) -> torch.Tensor:
    # Copied to the device once, not per merge: a host-to-device copy waits for the host.
    return torch.tensor(lightness_lut(8), device=device)


def gray_u8_to_lightness(gray: torch.Tensor) -> torch.Tensor:
    """L of 8-bit gray codes, (...) uint8 -> (...) float32, by the CPU path's own look-up table."""
    return _lightness_lut_on(gray.device)[gray.long()]


def lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> sRGB, clipped to the gamut.

    Args:
        lab: (B, 3, H, W) float32, channels L, a, b.

    Returns:
        (B, 3, H, W) float32 sRGB in [0, 1].
    """
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0

    def finv(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4.0 / 29.0))

    x, y, z = finv(fx) * _WHITE_X, finv(fy), finv(fz) * _WHITE_Z
    m = _XYZ_TO_RGB
    rgb = torch.stack([m[i][0] * x + m[i][1] * y + m[i][2] * z for i in range(3)], dim=1)
    return linear_to_srgb(rgb.clamp(0.0, 1.0))


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Rec.601 luma of 8-bit RGB in fixed point: (B, 3, H, W) uint8 -> (B, H, W) uint8.

    Within one code of OpenCV's RGB2GRAY, which rounds values at .5 differently in places.
    """
    r, g, b = rgb.int().unbind(1)
    return ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).to(torch.uint8)


def resize_area(gray: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize as OpenCV's INTER_AREA does: averaging to shrink, bilinear otherwise.

    Shrinking averages whole source pixels (OpenCV also weighs the pixels cut by a window's edge);
    the two differ by well under 1% of the range (tested).

    Args:
        gray: (B, C, H, W) float32.

    Returns:
        (B, C, height, width) float32.
    """
    if height <= gray.shape[-2] and width <= gray.shape[-1]:
        return F.interpolate(gray, size=(height, width), mode="area")
    return F.interpolate(gray, size=(height, width), mode="bilinear", align_corners=False)


def median_blur(ab: torch.Tensor, k: int) -> torch.Tensor:
    """Median filter of side ``k`` (odd) per channel, edges replicated, as OpenCV's ``medianBlur``.

    Args:
        ab: (B, C, H, W) float32.

    Returns:
        (B, C, H, W) float32.
    """
    if k <= 1:
        return ab
    r = k // 2
    padded = F.pad(ab, (r, r, r, r), mode="replicate")
    windows = padded.unfold(2, k, 1).unfold(3, k, 1)  # (B, C, H, W, k, k)
    return windows.reshape(*ab.shape, k * k).median(dim=-1).values


def despeckle_ab(ab: torch.Tensor, k: int, chunk: int | None = None) -> torch.Tensor:
    """:func:`colorize.color.despeckle_ab` on a tensor, with the same result: (B, 2, S, S) float32.

    ``chunk`` images at a time; by default as many as keep the k*k window copies near 256 MB (a
    15x15 window over 2x256x256 chroma is 118 MB per image).
    """
    if k <= 1:
        return ab
    chunk = chunk or max(1, (64 << 20) // (ab[0].numel() * k * k))
    codes = (ab.round() + 128.0).clamp(0.0, 255.0)
    return torch.cat([median_blur(part, k) for part in codes.split(chunk)]) - 128.0


def chroma_guide(
    lightness: torch.Tensor, ab: torch.Tensor, radius: int = GUIDE_RADIUS, eps: float = GUIDE_EPS
) -> torch.Tensor:
    """:func:`colorize.color.chroma_guide` on tensors: (B, 1, h, w) L and (B, 2, h, w) ab -> (B, 4, h, w).

    The channels are the slopes of a and b on L, then their offsets; windows reflect at the edges
    as OpenCV's ``BORDER_REFLECT_101`` does.
    """

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (radius,) * 4, mode="reflect"), 2 * radius + 1, stride=1)

    mean_l, mean_ab = box(lightness), box(ab)
    var_l = box(lightness * lightness) - mean_l * mean_l
    slope = (box(ab * lightness) - mean_l * mean_ab) / (var_l + eps)
    return box(torch.cat([slope, mean_ab - slope * mean_l], dim=1))


def merge_chroma(
    gray: torch.Tensor, ab: torch.Tensor, small: torch.Tensor | None = None, guide_radius: int = GUIDE_RADIUS
) -> torch.Tensor:
    """The model's chroma on the scans' own luminance, at the scans' own resolution.

    The tensor form of :func:`colorize.color.merge_chroma`, for a batch of same-sized 8-bit scans.

    Args:
        gray: (B, H, W) uint8 sRGB gray levels.
        ab: (B, 2, h, w) float32 chroma (usually 256x256), upsampled here along the scans' edges.
        small: (B, h, w) float32 gray in [0, 1], the grays area-shrunk to ``ab``'s size (the model's
            input, when the caller has it: shrinking again reads every full-resolution pixel once
            more); made here when None.
        guide_radius: :func:`chroma_guide`'s window radius, in ``ab``'s pixels; 0 for bicubic.

    Returns:
        (B, 3, H, W) uint8 sRGB.
    """
    height, width = gray.shape[-2:]
    lightness = gray_u8_to_lightness(gray)[:, None]
    guide_radius = min(guide_radius, (min(ab.shape[-2:]) - 1) // 2)
    if guide_radius > 0:
        if small is None:
            small = resize_area(gray[:, None].float() / 255.0, *ab.shape[-2:])[:, 0]
        guide = F.interpolate(
            chroma_guide(gray_to_lightness(small)[:, None], ab, guide_radius),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )
        ab_full = guide[:, :2] * lightness + guide[:, 2:]
    else:
        ab_full = F.interpolate(ab, size=(height, width), mode="bicubic", align_corners=False)
    lab = torch.cat([lightness, ab_full], dim=1)
    return (lab_to_srgb(lab) * 255.0).round_().to(torch.uint8)
