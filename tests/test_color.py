"""Colour maths: constants round-trip, and full-resolution merging keeps the scan's own luminance."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from colorize.color import (
    colourfulness,
    denormalize_ab,
    denormalize_l,
    gray_to_lightness,
    lab_to_rgb,
    lightness_lut,
    merge_chroma,
    normalize_ab,
    normalize_l,
    rgb_to_lab,
    upsample_ab,
)
from tests.helpers import colour_image, gray_image


def test_normalisations_round_trip():
    lightness = np.linspace(0, 100, 11, dtype=np.float32)
    ab = np.linspace(-110, 110, 11, dtype=np.float32)
    assert np.allclose(denormalize_l(normalize_l(lightness)), lightness, atol=1e-5)
    assert np.allclose(denormalize_ab(normalize_ab(ab)), ab, atol=1e-5)
    assert normalize_l(np.float32(0)) == -1 and normalize_l(np.float32(100)) == 1


def test_lab_round_trip_on_colour_image():
    rgb = colour_image(40, 50) / 255.0
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)) - rgb).max() < 4e-3  # about one 8-bit level


def test_lightness_of_gray_matches_cie():
    # sRGB mid-gray 0.5 has L* = 53.39; black 0, white 100.
    assert gray_to_lightness(np.array([0.0, 0.5, 1.0])) == pytest.approx([0.0, 53.39, 100.0], abs=0.02)
    assert lightness_lut(16)[32768] == pytest.approx(53.39, abs=0.02)


def _levels(rgb: np.ndarray) -> np.ndarray:
    """L of an 8-bit RGB image, in 8-bit levels (L * 255 / 100), computed in float."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 0] * 2.55


@pytest.mark.parametrize("shape", [(300, 400), (257, 1031), (1, 1)])
def test_merge_keeps_size_and_luminance(shape):
    gray = gray_image(*shape)
    rng = np.random.default_rng(0)
    ab = cv2.GaussianBlur(rng.normal(0, 1, (256, 256, 2)).astype(np.float32), (0, 0), 8)
    ab *= 40 / np.abs(ab).max()  # smooth chroma up to 40 Lab units, as models produce
    out = merge_chroma(gray, ab)
    assert out.shape == (*shape, 3) and out.dtype == np.uint8
    l_in, l_out = _levels(np.repeat(gray[..., None], 3, axis=2)), _levels(out)
    clipped = (out == 0).any(axis=2) | (out == 255).any(axis=2)
    assert np.abs(l_out - l_in)[~clipped].max() <= 1.0
    assert clipped.mean() < 0.2


def test_merge_with_zero_chroma_gives_the_scan_back():
    gray8 = gray_image(64, 80)
    assert (merge_chroma(gray8, np.zeros((8, 8, 2), np.float32)) == gray8[..., None]).all()
    gray16 = gray_image(64, 80, dtype=np.uint16)
    out16 = merge_chroma(gray16, np.zeros((8, 8, 2), np.float32))
    assert out16.dtype == np.uint16 and np.abs(out16.astype(int) - gray16[..., None]).max() <= 2


def test_chroma_is_upsampled_smoothly_not_nearest():
    ab = np.zeros((4, 4, 2), np.float32)
    ab[:, 2:, 0] = 40.0  # a hard edge in a*
    up = upsample_ab(ab, 64, 64)
    levels = np.unique(np.round(up[32, :, 0], 1))
    assert len(levels) > 4  # nearest neighbour would give exactly 2 levels


def test_merged_colour_edges_follow_the_scans_edges():
    """A dark post against a bright sky: the model's chroma is blurred over a few of its pixels, as at 256 it
    must be; at full resolution the colour must stop where the scan's edge is, not bleed into the sky."""
    height, width, edge = 1024, 1024, 509  # the edge falls inside a model pixel (4 full-res px each)
    gray = np.full((height, width), 220, np.uint8)
    gray[:, :edge] = 60
    ab = np.zeros((256, 256, 2), np.float32)
    ab[:, : edge // 4, 1], ab[:, edge // 4 :, 1] = 30.0, -30.0  # post yellowish (b* > 0), sky blue (b* < 0)
    ab = cv2.GaussianBlur(ab, (0, 0), 2.0)
    near = slice(edge - 24, edge + 24)  # six model pixels either side

    def error(out: np.ndarray) -> float:
        """Mean distance of b* near the edge from the b* each side has far from it (the sky's is clipped)."""
        b = cv2.cvtColor(out.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[512, :, 2]
        plateau = np.where(np.arange(width) < edge, b[100], b[900])
        return float(np.abs(b - plateau)[near].mean())

    def b_at(out: np.ndarray, x: int) -> float:
        return float(cv2.cvtColor(out[512:513, x : x + 1].astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[0, 0, 2])

    guided, bicubic = merge_chroma(gray, ab), merge_chroma(gray, ab, guide_radius=0)
    assert b_at(guided, edge - 1) > 15 and b_at(guided, edge) < -15  # the colour turns at the edge itself
    assert b_at(bicubic, edge - 1) < 10 and b_at(bicubic, edge) > -10  # without the guide it is smeared over it
    assert error(guided) < 0.6 * error(bicubic)
    inner = slice(100, 400)
    assert np.allclose(guided[:, inner], bicubic[:, inner], atol=1)  # away from edges: the same colour


def test_colourfulness_is_zero_for_gray_and_grows_with_colour():
    gray = np.repeat(gray_image(50, 60)[..., None], 3, axis=2)
    assert colourfulness(gray) == pytest.approx(0.0)
    vivid = colour_image(50, 60)
    muted = ((vivid.astype(float) + gray) / 2).astype(np.uint8)
    assert colourfulness(vivid) > colourfulness(muted) > 0
