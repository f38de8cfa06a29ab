"""Output encoders: ours (``imaging.encode_image``) against Pillow's, alone and in two threads.

    python bench/encoders.py [--repeat 12]

For the 8-bit output formats (JPEG and TIFF are OpenCV's in ours, PNG and WebP Pillow's), encodes one
colorized 1600x1200 output (a gray scan with smooth chroma, as the model makes) with Pillow and
with ours: once one image at a time, once as two threads sharing the work, as the pipeline's writer
threads do. An encoder that holds Python's GIL gets nothing from the second thread. Printed: ms
per image alone, the speed-up from the second thread, the output's size, and whether the two
decode to the same pixels.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.jp2_codec import per_image  # noqa: E402  (the same timing)
from bench.throughput import JPEG_SIZE, gray_scan  # noqa: E402
from colorize.imaging import JPEG_QUALITY, encode_image  # noqa: E402

# Pillow's options for each format, as the pipeline passes them (PNG, WebP) or did before it used
# OpenCV there (JPEG, TIFF).
PILLOW_OPTIONS: dict[str, dict[str, object]] = {
    "JPEG": {"quality": JPEG_QUALITY},
    "TIFF": {"compression": "tiff_adobe_deflate"},
    "PNG": {"compress_level": 4},
    "WEBP": {"quality": JPEG_QUALITY, "method": 4},
}


def colorized() -> np.ndarray:
    """(H, W, 3) uint8 RGB: a gray scan with smooth, model-like chroma."""
    gray = gray_scan(JPEG_SIZE, 3, 8)
    rng = np.random.default_rng(0)
    chroma = [cv2.GaussianBlur(rng.normal(0, 20, gray.shape).astype(np.float32), (0, 0), 30) for _ in range(2)]
    lab = np.dstack([gray.astype(np.float32) * (100 / 255), *chroma])
    return (np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0, 1) * 255).round().astype(np.uint8)


def pillow(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    dpi = {} if fmt == "WEBP" else {"dpi": (300, 300)}
    Image.fromarray(rgb).save(buf, format=fmt, **dpi, **PILLOW_OPTIONS[fmt])
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=12, help="images per measurement")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as in a shard: the threads are ours
    rgb = colorized()
    print(f"{'format':6s} {'encoder':7s} {'ms/image':>9s} {'2 threads':>10s} {'bytes':>10s}  same pixels")
    for fmt in PILLOW_OPTIONS:
        ways: dict[str, Callable[[], bytes]] = {
            "Pillow": lambda f=fmt: pillow(rgb, f),
            "ours": lambda f=fmt: encode_image(rgb, f, (300, 300)),
        }
        encoded = {name: way() for name, way in ways.items()}  # also the warm-up
        pixels = [np.asarray(Image.open(io.BytesIO(data))) for data in encoded.values()]
        same = np.array_equal(*pixels)
        for name, way in ways.items():
            alone = per_image(way, args.repeat, 1)
            two = per_image(way, args.repeat, 2)
            print(f"{fmt:6s} {name:7s} {1000 * alone:9.1f} {alone / two:9.2f}x {len(encoded[name]):10d}  {same}")


if __name__ == "__main__":
    main()
