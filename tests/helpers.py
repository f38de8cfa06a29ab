"""Test helpers: images and models the tests make themselves (a user's clone has no ../shared)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from colorize.imaging import with_jp2_resolution
from colorize.model import GeneratorConfig, build_generator, init_weights
from colorize.modelfile import new_card, save_model
from colorize.storage import open_storage


def gray_image(height: int, width: int, seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    """A gray picture with structure (gradient, disc, noise), not pure noise: (H, W) uint8/uint16."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 0.15 + 0.7 * x / max(width - 1, 1)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(height, width) * 0.25) ** 2
    img = np.where(disc, 1.0 - img, img) + rng.normal(0, 0.03, img.shape)
    top = 65535 if dtype == np.uint16 else 255
    return np.clip(img * top, 0, top).astype(dtype)


def colour_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A colourful RGB picture: (H, W, 3) uint8 with several hues at every lightness."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / 7.0)
    g = 0.5 + 0.5 * np.sin(y / 5.0 + 1)
    b = 0.5 + 0.5 * np.cos((x + y) / 9.0)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 0.02, (height, width, 3))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_model(folder: Path, width: int = 4, color_mode: str = "lab", seed: int = 0, name: str = "tiny") -> dict:
    """A small random-weight model saved in our format; returns its card."""
    torch.manual_seed(seed)
    cin, cout = (1, 2) if color_mode == "lab" else (3, 3)
    cfg = GeneratorConfig(in_channels=cin, out_channels=cout, width=width)
    gen = build_generator(cfg)
    init_weights(gen)
    return save_model(open_storage(str(folder)), gen, new_card(name, cfg, color_mode))


def make_archive(root: Path) -> dict[str, str]:
    """A small archive of real files covering the cases a run must handle.

    Returns:
        key -> the status the first run must give it.
    """
    gray = gray_image(120, 160)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(gray_image(160, 120)))).save(buf, "JPEG", exif=exif)
    pages = io.BytesIO()
    frames = [Image.fromarray(gray_image(100, 130, seed=i)) for i in range(2)]
    frames[0].save(pages, "TIFF", save_all=True, append_images=frames[1:])
    sepia = np.clip(np.stack([gray * 1.0, gray * 0.9, gray * 0.7], axis=-1), 0, 255).astype(np.uint8)
    files = {
        "a.jpg": (encode(gray, "JPEG", quality=92, dpi=(300, 300)), "colorized"),
        "nested/deep/b.png": (encode(gray_image(90, 70, seed=1), "PNG"), "colorized"),
        "nested/c16.tif": (encode(gray_image(80, 100, seed=2, dtype=np.uint16), "TIFF"), "colorized"),
        "d.webp": (encode(gray_image(64, 96, seed=3), "WEBP", quality=90), "colorized"),
        "e.bmp": (encode(gray_image(50, 60, seed=4), "BMP"), "colorized"),
        "nested/f.jp2": (with_jp2_resolution(encode(gray_image(72, 88, seed=5), "JPEG2000"), (400, 400)), "colorized"),
        "pages.tif": (pages.getvalue(), "colorized"),
        "rotated.jpg": (buf.getvalue(), "colorized"),
        "sepia.jpg": (encode(sepia, "JPEG", quality=90), "colorized"),
        "colour.jpg": (encode(colour_image(100, 120), "JPEG", quality=90), "skipped_color"),
        "bad/empty.jpg": (b"", "failed"),
        "bad/text.jpg": (b"these are notes, not a picture\n" * 20, "failed"),
        "bad/truncated.jpg": (encode(gray_image(300, 300), "JPEG")[:5000], "failed"),
        "back\\slash.jpg": (encode(gray, "JPEG"), "failed"),
    }
    for key, (data, _) in files.items():
        write(root / key, data)
    write(root / "notes.txt", b"not a scan extension: not listed")
    write(root / "nested/old.gif", encode(gray_image(30, 40), "GIF"))  # an image, but not a scan format
    write(root / "nested/g.j2k", encode(gray_image(30, 40), "JPEG2000"))  # a bare codestream: no metadata
    return {key: status for key, (_, status) in files.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
