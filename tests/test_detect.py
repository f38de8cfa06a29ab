"""Colour detection: gray and toned monochrome prints are not colour; photographs are."""

from __future__ import annotations

import numpy as np
import pytest

from colorize.detect import detect_colour
from colorize.imaging import decode_scan
from tests.helpers import colour_image, encode, gray_image


def _toned(gray: np.ndarray, dark: tuple[float, ...], light: tuple[float, ...]) -> np.ndarray:
    g = gray.astype(np.float32)[..., None] / 255
    tone = np.array(dark, np.float32) * (1 - g) + np.array(light, np.float32) * g
    return np.clip(tone * 255, 0, 255).astype(np.uint8)


TONES = {
    "sepia": ((0.17, 0.10, 0.05), (1.0, 0.93, 0.78)),
    "cyanotype": ((0.0, 0.10, 0.30), (0.85, 0.93, 1.0)),
    "selenium": ((0.15, 0.08, 0.15), (0.98, 0.96, 0.95)),
}


def _preview(rgb: np.ndarray, quality: int = 80) -> np.ndarray:
    scan = decode_scan(encode(rgb, "JPEG", quality=quality))  # real JPEG artefacts in the chroma
    assert scan.preview is not None
    return scan.preview


def test_gray_saved_as_rgb_jpeg_is_not_colour():
    gray = gray_image(300, 400)
    assert not detect_colour(_preview(np.repeat(gray[..., None], 3, axis=2))).is_colour


@pytest.mark.parametrize("tone", sorted(TONES))
def test_toned_prints_are_not_colour(tone):
    rgb = _toned(gray_image(300, 400, seed=3), *TONES[tone])
    verdict = detect_colour(_preview(rgb))
    assert not verdict.is_colour, verdict
    assert verdict.mean_chroma > 5  # they do have chroma: saturation alone would misjudge them


def test_photographs_are_colour_and_the_reason_says_how_to_override():
    verdict = detect_colour(_preview(colour_image(300, 400), quality=90))
    assert verdict.is_colour
    assert "--colorize-color" in verdict.reason


def test_a_small_coloured_object_on_gray_is_colour():
    rgb = np.repeat(gray_image(300, 400)[..., None], 3, axis=2)
    rgb[100:160, 150:230] = (200, 30, 40)  # a red coat, 4% of the picture
    assert detect_colour(_preview(rgb, quality=90)).is_colour
