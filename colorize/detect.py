"""Is a scan already in colour? Gray and toned monochrome (sepia, selenium, cyanotype) are not.

A toned print has chroma, sometimes a lot, but a single hue at each lightness: its ab values lie on
one curve through the Lab space. A colour photograph has different hues at the same lightness (a
red coat and a green hedge can be equally light). So the test is the spread of chroma *within*
lightness bands, after removing each band's mean tint, not the amount of saturation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from colorize.color import rgb_to_lab

# Chroma (Lab units) a pixel needs before its hue means anything; JPEG noise and scanner casts
# on gray scans stay below it.
CHROMA_FLOOR = 8.0
# Fraction of pixels that must differ in hue from their lightness band before a scan is colour.
MIN_COLOUR_FRACTION = 0.02
_BANDS = 10


@dataclass(frozen=True)
class ColourVerdict:
    """Result of :func:`detect_colour`; ``reason`` is written to the manifest when skipping."""

    is_colour: bool
    colour_fraction: float
    mean_chroma: float

    @property
    def reason(self) -> str:
        return (
            f"already colour: {self.colour_fraction:.1%} of pixels differ in hue from their "
            f"lightness band (mean chroma {self.mean_chroma:.1f}); pass --colorize-color to colorize it as gray"
        )


def detect_colour(preview: np.ndarray) -> ColourVerdict:
    """Decide whether an RGB image is a colour image.

    Args:
        preview: (h, w, 3) uint8 RGB, small (long side about 256).

    Returns:
        The verdict, with the measurements it rests on.
    """
    lab = rgb_to_lab(preview.astype(np.float32) / 255.0).reshape(-1, 3)
    lightness, ab = lab[:, 0], lab[:, 1:]
    chroma = np.hypot(ab[:, 0], ab[:, 1])
    band = np.minimum((lightness / (100.0 / _BANDS)).astype(np.int64), _BANDS - 1)
    # Each band's tint is the median ab of its pixels: a toned print's hue curve, sampled per band.
    residual = np.empty_like(chroma)
    for b in np.unique(band):
        members = band == b
        tint = np.median(ab[members], axis=0)
        residual[members] = np.hypot(*(ab[members] - tint).T)
    colour_fraction = float(np.mean(residual > CHROMA_FLOOR))
    return ColourVerdict(
        is_colour=colour_fraction > MIN_COLOUR_FRACTION,
        colour_fraction=colour_fraction,
        mean_chroma=float(chroma.mean()),
    )
