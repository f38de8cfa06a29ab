"""What applying a scan's embedded ICC profile costs the decode (``imaging.decode_scan``).

    python bench/colour_profiles.py [--repeat 8] [--rounds 5]

For each kind of scan the pipeline reads (a 1600x1200 gray JPEG at quality 90, the same in RGB, a
2400x1800 16-bit gray TIFF and a 2400x1800 48-bit RGB PNG, as ``bench/throughput.py`` makes them),
decodes the file untagged, tagged with sRGB (most tagged files: checked once, then free), and
tagged with a profile that converts (Gray Gamma 2.2 for gray, Adobe RGB for RGB). Printed: ms per
scan on one thread (the median of rounds taken in turn), and each tagged decode's time as a ratio
to the untagged one, measured in the same run.

Then the choice for 16-bit RGB: LittleCMS's optimised 16-bit pipeline against its float one (what
``icc.to_srgb`` uses), on a 2400x1800 near-gray 16-bit Adobe RGB image: ms each, the optimised
one's largest error against the float one's, in 16-bit levels, and the float one in two threads.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import cv2
import imagecodecs
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.jp2_codec import per_image  # noqa: E402  (the same timing)
from bench.throughput import JPEG_SIZE, TIFF_SIZE, gray_scan  # noqa: E402
from colorize import icc  # noqa: E402
from colorize.imaging import decode_scan, with_png_chunk  # noqa: E402
from colorize.jpeg_segments import icc_segment, with_app_segments  # noqa: E402

SRGB = imagecodecs.cms_profile("srgb")
GRAY_22 = imagecodecs.cms_profile("gray", gamma=2.2)
ADOBE_RGB = imagecodecs.cms_profile(
    "rgb", primaries=[0.64, 0.33, 0.21, 0.71, 0.15, 0.06], whitepoint=[0.3127, 0.3290], gamma=563 / 256
)


def with_profile(fmt: str, pixels: np.ndarray, profile: bytes | None) -> bytes:
    """The scan encoded as ``fmt`` (JPEG q90, TIFF, PNG) carrying ``profile`` (None: untagged)."""
    if fmt == "TIFF":  # libtiff's, uncompressed, tagged or not
        return imagecodecs.tiff_encode(pixels, iccprofile=profile)
    ext, params = {"JPEG": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]), "PNG": (".png", [])}[fmt]
    ok, buf = cv2.imencode(ext, pixels[..., ::-1] if pixels.ndim == 3 else pixels, params)
    assert ok
    data = buf.tobytes()
    if profile is None:
        return data
    if fmt == "JPEG":  # an APP2 ICC_PROFILE segment (one: these profiles are small)
        tagged = with_app_segments(data, [], [icc_segment(profile) or b""])
        assert tagged is not None
        return tagged
    return with_png_chunk(data, b"iCCP", b"profile\x00\x00" + zlib.compress(profile))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=8, help="decodes per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each, in turn; median shown")
    args = parser.parse_args()
    gray8, gray16 = gray_scan(JPEG_SIZE, 1, 8), gray_scan(TIFF_SIZE, 2, 16)
    kinds = [
        ("gray JPEG 1600x1200", "JPEG", gray8, GRAY_22, "Gray Gamma 2.2"),
        ("RGB JPEG 1600x1200", "JPEG", np.repeat(gray8[..., None], 3, axis=2), ADOBE_RGB, "Adobe RGB"),
        ("16-bit gray TIFF 2400x1800", "TIFF", gray16, GRAY_22, "Gray Gamma 2.2"),
        ("48-bit RGB PNG 2400x1800", "PNG", np.repeat(gray16[..., None], 3, axis=2), ADOBE_RGB, "Adobe RGB"),
    ]
    print(f"{'scan':28s} {'untagged ms':>12s} {'sRGB-tagged':>12s} {'converted':>26s}")
    for name, fmt, pixels, profile, profile_name in kinds:
        files = {tag: with_profile(fmt, pixels, p) for tag, p in (("none", None), ("srgb", SRGB), ("other", profile))}
        assert decode_scan(files["other"]).note == ""  # the profile applies; and warms its cached check
        decode_scan(files["srgb"])
        rounds = [{tag: per_image(lambda data=data: decode_scan(data), args.repeat, 1) for tag, data in files.items()}
                  for _ in range(args.rounds)]  # fmt: skip
        times = {tag: float(np.median([r[tag] for r in rounds])) for tag in files}
        base = times["none"]
        print(
            f"{name:28s} {base * 1e3:12.1f} {times['srgb'] / base:11.2f}x "
            f"{profile_name:>15s} {times['other'] / base:9.2f}x ({times['other'] * 1e3:.1f} ms)"
        )

    pipelines(args.repeat)


def pipelines(repeat: int) -> None:
    """LittleCMS's optimised 16-bit pipeline against the float one ``icc.to_srgb`` takes, timed and compared."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65536, (TIFF_SIZE[1], TIFF_SIZE[0], 1))
    tinted = np.clip(gray + rng.integers(-2000, 2000, (*gray.shape[:2], 3)), 0, 65535).astype(np.uint16)
    float_way = icc.to_srgb(tinted, ADOBE_RGB)
    optimised = icc._transform(tinted, ADOBE_RGB, "rgb")
    error = int(np.abs(optimised.astype(np.int32) - float_way).max())
    ms = {
        "optimised 16-bit": per_image(lambda: icc._transform(tinted, ADOBE_RGB, "rgb"), repeat, 1),
        "float (ours)": per_image(lambda: icc.to_srgb(tinted, ADOBE_RGB), repeat, 1),
    }
    two = per_image(lambda: icc.to_srgb(tinted, ADOBE_RGB), repeat, 2)
    print(f"\n16-bit Adobe RGB -> sRGB, {TIFF_SIZE[0]}x{TIFF_SIZE[1]} near-gray pixels:")
    for name, t in ms.items():
        print(f"  {name:18s} {t * 1e3:8.1f} ms")
    print(f"  optimised's largest error: {error} of 65535; float in two threads: {ms['float (ours)'] / two:.2f}x one")


if __name__ == "__main__":
    main()
