"""JPEG 2000 decode and encode: the pipeline's (imagecodecs) against Pillow and OpenCV, alone and in two threads.

    python bench/jp2_codec.py [--side 8000] [--repeat 2]

Makes a gray 8-bit scan of SIDE x 3/4 SIDE (48 MP at the default) stored as lossless .jp2, and a
colour output of the same size. Measures, per image, the seconds to decode the scan and to encode
the output losslessly with each library, once one at a time and once as two threads sharing the
work (the pipeline's readers and writers are threads). Printed: seconds per image, each library's
speed-up from the second thread, its time with two threads as a ratio to Pillow's, and the size
of each library's lossless output.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import gray_scan  # noqa: E402
from colorize.imaging import decode_scan, encode_image  # noqa: E402


def per_image(work: Callable[[], object], n: int, threads: int) -> float:
    """Wall seconds per image for ``n`` images done by ``threads`` threads."""
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: work(), range(n)))
        return (time.perf_counter() - start) / n


def pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


def pillow_encode(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG2000", irreversible=False, mct=1)
    return buf.getvalue()


def opencv_decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def opencv_encode(rgb: np.ndarray) -> bytes:
    # Lossless only at the top rate; its default is lossy.
    ok, buf = cv2.imencode(".jp2", rgb[..., ::-1], [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, 1000])
    assert ok
    return buf.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=8000, help="long side of the scan (4:3)")
    ap.add_argument("--repeat", type=int, default=2, help="images per measurement (even: two threads share them)")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # the pipeline's threads are its readers and writers, not OpenCV's pool
    gray = gray_scan((args.side, args.side * 3 // 4), 0, 8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG2000")
    scan = buf.getvalue()
    rgb = np.ascontiguousarray(np.stack([gray, (gray * 0.9).astype(np.uint8), (gray * 0.7).astype(np.uint8)], -1))
    jobs = {
        "decode": {
            "pipeline": lambda: decode_scan(scan), "pillow": lambda: pillow_decode(scan),
            "opencv": lambda: opencv_decode(scan),
        },
        "encode": {
            "pipeline": lambda: encode_image(rgb, "JPEG2000"), "pillow": lambda: pillow_encode(rgb),
            "opencv": lambda: opencv_encode(rgb),
        },
    }  # fmt: skip
    sizes = {lib: len(encode()) for lib, encode in jobs["encode"].items()}  # type: ignore[arg-type]
    print(f"{gray.size / 1e6:.0f} MP, {args.repeat} images per measurement, {len(scan) / 2**20:.1f} MB scan")
    print(f"{'':8} {'library':9} {'s/image':>8} {'2 threads':>10} {'speed-up':>9} {'vs Pillow':>10}")
    for what, by in jobs.items():
        alone = {lib: per_image(work, args.repeat, 1) for lib, work in by.items()}
        two = {lib: per_image(work, args.repeat, 2) for lib, work in by.items()}
        for lib in by:
            print(
                f"{what:8} {lib:9} {alone[lib]:>8.2f} {two[lib]:>10.2f} {alone[lib] / two[lib]:>9.2f} "
                f"{two[lib] / two['pillow']:>10.2f}"
            )
    print("output size MB: " + ", ".join(f"{lib} {n / 2**20:.1f}" for lib, n in sizes.items()))


if __name__ == "__main__":
    main()
