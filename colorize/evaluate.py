"""Measuring colour quality on held-out pairs, through the same path production uses.

Each held-out colour image is reduced to its gray, colorized exactly as ``colorize run`` would
(model input at 256, chroma merged on the full-resolution gray), and compared with the original:

* PSNR and SSIM on RGB (scikit-image's implementations);
* mean ab error: mean Euclidean distance between predicted and true (a*, b*), Lab units;
* colourfulness (Hasler & Suesstrunk, |rg|/|yb| form, see :func:`colorize.color.colourfulness`)
  of outputs and of ground truth, as a ratio and as a difference.

Baselines plug in as another ``predict_ab``: gray (zero chroma) and the training set's mean chroma.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorize.color import GUIDE_RADIUS, colourfulness, luma, merge_chroma, rgb_to_lab
from colorize.engine import model_input
from colorize.imaging import shrink
from colorize.training.pairs import LoadedPair

PredictAB = Callable[[np.ndarray], np.ndarray]  # (B, S, S) gray in [0, 1] -> (B, S, S, 2) ab

# Long side of the images compared: large enough to judge the merge at scan-like resolution,
# small enough that SSIM on a few dozen images takes seconds.
EVAL_LONG_SIDE = 768


@dataclass(frozen=True)
class QualityReport:
    psnr: float
    ssim: float
    ab_error: float
    colourfulness: float
    colourfulness_gt: float
    n: int

    @property
    def colourfulness_ratio(self) -> float:
        return self.colourfulness / self.colourfulness_gt if self.colourfulness_gt else 0.0

    @property
    def colourfulness_diff(self) -> float:
        return abs(self.colourfulness - self.colourfulness_gt)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}psnr": self.psnr,
            f"{prefix}ssim": self.ssim,
            f"{prefix}ab_error": self.ab_error,
            f"{prefix}colourfulness": self.colourfulness,
            f"{prefix}colourfulness_gt": self.colourfulness_gt,
            f"{prefix}colourfulness_ratio": self.colourfulness_ratio,
            f"{prefix}colourfulness_diff": self.colourfulness_diff,
        }


def eval_size(rgb: np.ndarray, long_side: int = EVAL_LONG_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 at evaluation size: long side at most ``long_side``."""
    return shrink(rgb, long_side)


def eval_pairs(pairs: Sequence[LoadedPair]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ground truths at evaluation size and each pair's own gray resized to match them."""
    images = [eval_size(p.rgb) for p in pairs]
    grays = [
        cv2.resize(p.gray, img.shape[1::-1], interpolation=cv2.INTER_AREA) for p, img in zip(pairs, images, strict=True)
    ]
    return images, grays


def colorize_like_production(
    gray: np.ndarray, predict_ab: PredictAB, size: int = 256, guide_radius: int = GUIDE_RADIUS
) -> np.ndarray:
    """(H, W) uint8 gray -> (H, W, 3) uint8 RGB, by the production path (``guide_radius``: see merge_chroma)."""
    small = model_input(gray, size)
    return merge_chroma(gray, predict_ab(small[None])[0], small, guide_radius)


def outputs(
    images: Sequence[np.ndarray],
    predict_ab: PredictAB,
    size: int = 256,
    grays: Sequence[np.ndarray] | None = None,
    guide_radius: int = GUIDE_RADIUS,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(truth, output) for each image, both (H, W, 3) uint8 RGB: each gray (``grays[i]``, else the
    truth's luma) colorized by the production path."""
    for i, gt in enumerate(images):
        gray = grays[i] if grays is not None else luma(gt)
        yield gt, colorize_like_production(gray, predict_ab, size, guide_radius)


def evaluate(
    images: Sequence[np.ndarray],
    predict_ab: PredictAB,
    size: int = 256,
    grays: Sequence[np.ndarray] | None = None,
    guide_radius: int = GUIDE_RADIUS,
) -> QualityReport:
    """Score ``predict_ab`` on ground-truth colour images.

    Args:
        images: (H, W, 3) uint8 RGB ground truths (already at evaluation size).
        predict_ab: the model (or baseline) under test.
        size: the model's input side.
        grays: the model's gray inputs, when they are not simply each image's luma (curated pairs).
        guide_radius: how the chroma is taken to full resolution (:func:`colorize.color.merge_chroma`).

    Returns:
        Means over the images.
    """
    return score(outputs(images, predict_ab, size, grays, guide_radius))


def score(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> QualityReport:
    """Means over (truth, output) pairs, both (H, W, 3) uint8 RGB, as from :func:`outputs`."""
    scores = []
    for gt, out in pairs:
        ab_err = np.hypot(*(rgb_to_lab(out / 255.0)[..., 1:] - rgb_to_lab(gt / 255.0)[..., 1:]).transpose(2, 0, 1))
        scores.append(
            (
                peak_signal_noise_ratio(gt, out, data_range=255),
                structural_similarity(gt, out, channel_axis=2, data_range=255),
                float(ab_err.mean()),
                colourfulness(out),
                colourfulness(gt),
            )
        )
    if not scores:
        raise ValueError("no images to evaluate on")
    m = np.mean(np.array(scores, dtype=np.float64), axis=0)
    return QualityReport(float(m[0]), float(m[1]), float(m[2]), float(m[3]), float(m[4]), len(scores))


# A true pixel counts as green where a* < -8 with chroma over 15 (grass, leaves; not grey-greens).
GREEN_A, GREEN_CHROMA = -8.0, 15.0


@dataclass(frozen=True)
class AxisReport:
    """How much of each chroma axis a model predicts, pooled over every pixel of the images.

    ``a_spread`` / ``b_spread``: standard deviation of the output's a* (green-red) / b* (blue-yellow)
    over the truth's, 1 for a model that spreads colour as widely as the photos do, 0 for gray.
    ``green_a`` / ``green_a_gt``: mean a* of the output / the truth over the truth's green pixels;
    ``green_share``: the share of those the output makes green too (a* < ``GREEN_A``).
    """

    a_spread: float
    b_spread: float
    green_a: float
    green_a_gt: float
    green_share: float
    n: int


def chroma_axes(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> AxisReport:
    """Measure each chroma axis over (truth, output) pairs, both (H, W, 3) uint8 RGB, as from :func:`outputs`
    (the production path)."""
    out_ab, gt_ab = [], []
    for gt, out in pairs:
        out_ab.append(rgb_to_lab(out / 255.0)[..., 1:].reshape(-1, 2))
        gt_ab.append(rgb_to_lab(gt / 255.0)[..., 1:].reshape(-1, 2))
    if not out_ab:
        raise ValueError("no images to evaluate on")
    pred, true = np.concatenate(out_ab).astype(np.float64), np.concatenate(gt_ab).astype(np.float64)
    spread = pred.std(axis=0) / np.maximum(true.std(axis=0), 1e-9)
    green = (true[:, 0] < GREEN_A) & (np.hypot(true[:, 0], true[:, 1]) > GREEN_CHROMA)
    if not green.any():
        return AxisReport(float(spread[0]), float(spread[1]), 0.0, 0.0, 0.0, len(out_ab))
    return AxisReport(
        float(spread[0]), float(spread[1]), float(pred[green, 0].mean()), float(true[green, 0].mean()),
        float((pred[green, 0] < GREEN_A).mean()), len(out_ab),
    )  # fmt: skip


def gray_baseline(gray: np.ndarray) -> np.ndarray:
    """The scan unchanged: zero chroma. (B, S, S) -> (B, S, S, 2)."""
    return np.zeros((*gray.shape, 2), dtype=np.float32)


def mean_chroma_baseline(mean_ab: np.ndarray) -> PredictAB:
    """Every pixel gets the same chroma (the training set's mean ab, shape (2,))."""
    ab = np.asarray(mean_ab, dtype=np.float32)

    def predict(gray: np.ndarray) -> np.ndarray:
        return np.broadcast_to(ab, (*gray.shape, 2)).copy()

    return predict


def mean_ab(images: Sequence[np.ndarray]) -> np.ndarray:
    """Mean (a*, b*) over all pixels of (H, W, 3) uint8 images: shape (2,)."""
    sums = np.zeros(2)
    count = 0
    for rgb in images:
        ab = rgb_to_lab(rgb / 255.0)[..., 1:].reshape(-1, 2)
        sums += ab.sum(axis=0)
        count += len(ab)
    return (sums / max(count, 1)).astype(np.float32)


def sample_grid(rows: Sequence[tuple[np.ndarray, ...]], cell: int = 160) -> np.ndarray:
    """Tile images into a grid, one tuple per row (e.g. gray, output, truth); (H, W, 3) uint8 out.

    Each image is shrunk to fit ``cell`` pixels on its long side and centred in a column ``cell``
    wide; a row is as tall as its tallest image, so landscape photos are not boxed in white.
    """
    tiles = []
    for row in rows:
        smalls = []
        for img in row:
            rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
            h, w = rgb.shape[:2]
            scale = cell / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            smalls.append(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
        height = max(small.shape[0] for small in smalls)
        canvas = np.full((height, cell * len(smalls), 3), 255, dtype=np.uint8)
        for i, small in enumerate(smalls):
            y, x = (height - small.shape[0]) // 2, i * cell + (cell - small.shape[1]) // 2
            canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
        tiles.append(canvas)
    return np.concatenate(tiles, axis=0)
