"""What checking a JPEG's compressed data for damage costs the decode (``imaging.decode_scan``).

    python bench/jpeg_check.py [--repeat 20] [--rounds 5]

Pillow decodes a JPEG whose data is cut short or zeroed without a word, the missing part gray;
``imaging._check_jpeg_data`` decodes it again with libjpeg-turbo (simplejpeg) at 1/8 scale to hear
its warnings. On the scans ``bench/throughput.py`` makes (a 1600x1200 gray JPEG at quality 90, and
the same as RGB), printed: ms per scan on one thread (the median of rounds taken in turn) for the
whole ``decode_scan`` and for the check alone, and the check's share of the decode, measured in the
same run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.jp2_codec import per_image  # noqa: E402  (the same timing)
from bench.throughput import JPEG_SIZE, gray_scan  # noqa: E402
from colorize.imaging import _check_jpeg_data, decode_scan  # noqa: E402


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="scans per timing")
    parser.add_argument("--rounds", type=int, default=5, help="timings of each, taken in turn; the median is kept")
    args = parser.parse_args()
    gray = gray_scan(JPEG_SIZE, seed=1, bits=8)
    for kind, data in (("gray", _jpeg(gray)), ("RGB", _jpeg(np.repeat(gray[..., None], 3, axis=2)))):
        header = Image.open(io.BytesIO(data))
        work = {
            "decode_scan": lambda d=data: decode_scan(d),
            "the check alone": lambda d=data, h=header: _check_jpeg_data(h, d),
        }
        times: dict[str, list[float]] = {name: [] for name in work}
        for _ in range(args.rounds):
            for name, fn in work.items():
                times[name].append(per_image(fn, args.repeat, 1))
        ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
        print(
            f"{kind} {JPEG_SIZE[0]}x{JPEG_SIZE[1]} JPEG: decode_scan {ms['decode_scan']:.2f} ms, "
            f"the check {ms['the check alone']:.2f} ms ({ms['the check alone'] / ms['decode_scan']:.0%} of it)"
        )


if __name__ == "__main__":
    main()
