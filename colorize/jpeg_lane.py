"""JPEG scans decoded, colour-merged and encoded on the GPU, a batch at a time.

On a GPU host the CPU work around the model (decoding, the full-resolution merge and encoding:
about 0.05 CPU-s per 1600x1200 scan) bounds a run, not the GPU (``bench/RESULTS.md``). For the
common case, 8-bit JPEG scans written back as JPEG, this lane moves that work to the GPU: nvJPEG
decodes a batch, the merge is tensor maths (:mod:`colorize.tensor_color`) and nvJPEG encodes, with
the writer threads that are idle encoding some of each batch on the host. The CPU is left reading,
hashing, carrying metadata and writing. A gray JPEG's embedded colour profile is applied on the GPU,
as a table. What the lane cannot take (other formats, CMYK, RGB scans tagged with a profile other
than sRGB, files nvJPEG refuses) goes the CPU way, which also names any fault in a file.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from colorize import icc, tensor_color
from colorize.imaging import (
    JPEG_QUALITY,
    PREVIEW_SIZE,
    dpi_of,
    embedded_profile,
    encode_image,
    is_quarter_turn,
    set_jpeg_dpi,
    shrunk_size,
    upright_dpi,
)

if TYPE_CHECKING:
    from torchvision.io import ImageReadMode

log = logging.getLogger(__name__)
# torchvision's codecs are imported where they are used: importing torchvision.io loads all of
# torchvision (about a second), which processes on a CPU, where the lane is off, never need.
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec, which the GPU images we
# deploy on do not have yet; the call is the same, so the warning only fills the logs.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)

_EXIF_ORIENTATION = 0x0112
# Images merged at once: bounds the merge's float32 temporaries on small GPUs (a few dozen bytes per
# scan pixel, the guided chroma fit's four channels at full resolution among them).
_MERGE_CHUNK = 8


@dataclass(frozen=True)
class JpegHeader:
    """A JPEG the lane can take, as its header describes it. Same fields as :class:`~colorize.imaging.Scan`
    where a manifest row needs them.

    Attributes:
        width, height: the upright image's size (after the EXIF orientation).
        mode: ``L`` (one component) or ``RGB`` (YCbCr or RGB).
        orientation: the EXIF orientation, 1 (as stored) to 8.
        dpi: the recorded resolution of the upright image, if any.
    """

    width: int
    height: int
    mode: str
    orientation: int
    dpi: tuple[float, float] | None
    bit_depth: int = 8
    format: str = "JPEG"
    pages: int = 1
    note: str = ""  # as Scan's: nothing of a JPEG this lane takes is left unread
    # A gray JPEG's embedded profile as a table (``icc.gray_table``), applied on the device.
    tone: np.ndarray | None = field(default=None, compare=False)


def read_header(data: bytes, max_pixels: int) -> JpegHeader | None:
    """The header of a JPEG this lane can take; None for anything else.

    None sends a file the CPU way, whose decoder reports what is wrong with it, if anything (over
    the pixel limit, corrupt, ...); nothing is decided here that the CPU path would decide otherwise.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.format != "JPEG" or img.mode not in ("L", "RGB"):
                return None
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            profile = embedded_profile(img, data)
    except Exception:  # noqa: BLE001 - any doubt about the header: the CPU path decides and explains
        return None
    tone = None
    try:  # a colour profile other than sRGB converts an RGB scan whole, which the CPU way does
        if profile and img.mode == "L":
            tone = icc.gray_table(profile, 8)
        elif profile and not icc.is_srgb(profile):
            return None
    except icc.ProfileError:
        return None  # the CPU way notes it on the row
    if not 0 < width * height <= max_pixels:
        return None
    if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None  # no end-of-image marker: cut short, which nvJPEG decodes without a word (seen on an H200)
    orientation = orientation if orientation in range(1, 9) else 1
    if is_quarter_turn(orientation):  # the sides trade places, as decode_scan's
        width, height = height, width
    return JpegHeader(width, height, img.mode, orientation, upright_dpi(dpi_of(img), orientation), tone=tone)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation as Pillow's ``ImageOps.exif_transpose`` does: (C, H, W) -> (C, H', W')."""
    hw = (-2, -1)
    return {
        1: lambda x: x,
        2: lambda x: x.flip(-1),
        3: lambda x: x.flip(hw),
        4: lambda x: x.flip(-2),
        5: lambda x: x.transpose(-2, -1),
        6: lambda x: torch.rot90(x, -1, hw),
        7: lambda x: x.transpose(-2, -1).flip(hw),
        8: lambda x: torch.rot90(x, 1, hw),
    }[orientation](image)


@dataclass
class Decoded:
    """A scan decoded on the device: its gray at full resolution and, for RGB files, a preview."""

    gray: torch.Tensor  # (H, W) uint8, upright, on the device
    preview: np.ndarray | None  # (h, w, 3) uint8 RGB, long side at most 256, on the host; RGB files only


@lru_cache(maxsize=32)
def _table_on(table: bytes, device: torch.device) -> torch.Tensor:
    """An 8-bit gray table (``icc.gray_table``'s bytes) on the device, copied once per profile, not per
    scan: a host-to-device copy waits for the host."""
    return torch.frombuffer(bytearray(table), dtype=torch.uint8).to(device)


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class JpegLane:
    """Decodes, merges and encodes JPEG scans in batches on one device (a GPU; a CPU in tests)."""

    def __init__(self, device: torch.device):
        self.device = device
        # Host encoders' copies: beside the default stream, where the lane's and the model's kernels run.
        self._copies = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _decode_all(self, datas: Sequence[bytes], mode: ImageReadMode) -> list[torch.Tensor | None]:
        from torchvision.io import decode_jpeg

        if not datas:
            return []
        try:  # one batched call: nvJPEG decodes the whole batch together
            return list(decode_jpeg([_tensor(d) for d in datas], mode=mode, device=self.device))
        except RuntimeError:
            pass  # one bad file fails the whole call: find which, one by one
        out: list[torch.Tensor | None] = []
        for data in datas:
            try:
                out.append(decode_jpeg(_tensor(data), mode=mode, device=self.device))
            except RuntimeError as err:
                log.info("GPU decoder refused a JPEG, the CPU will decode it: %s", err)
                out.append(None)
        return out

    def decode(self, datas: Sequence[bytes], headers: Sequence[JpegHeader]) -> list[Decoded | None]:
        """Decode a batch; None where the decoder refuses a file (it then goes the CPU way)."""
        from torchvision.io import ImageReadMode

        out: list[Decoded | None] = [None] * len(datas)
        for mode, read_mode in (("L", ImageReadMode.GRAY), ("RGB", ImageReadMode.RGB)):
            picked = [i for i, h in enumerate(headers) if h.mode == mode]
            images = self._decode_all([datas[i] for i in picked], read_mode)
            for i, image in zip(picked, images, strict=True):
                if image is None:
                    continue
                image = upright(image, headers[i].orientation)
                if image.shape[-2:] != (headers[i].height, headers[i].width):
                    continue  # the decoder disagrees with the header: leave it to the CPU path
                if mode == "L":
                    tone = headers[i].tone
                    gray = image[0] if tone is None else _table_on(tone.tobytes(), self.device)[image[0].int()]
                    out[i] = Decoded(gray, None)
                else:
                    out[i] = Decoded(tensor_color.luma(image[None])[0], self._preview(image))
        return out

    def _preview(self, rgb: torch.Tensor) -> np.ndarray:
        """(3, H, W) uint8 -> the colour detector's (h, w, 3) uint8 preview, sized as ``imaging.shrink`` does."""
        small = rgb[None].float()
        size = shrunk_size(int(rgb.shape[-2]), int(rgb.shape[-1]), PREVIEW_SIZE)
        if size is not None:
            small = tensor_color.resize_area(small, *size)
        return small[0].round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def model_input(self, grays: Sequence[torch.Tensor], size: int) -> torch.Tensor:
        """Full-resolution grays -> (B, size, size) float32 in [0, 1], squashed as :func:`engine.model_input`."""
        return torch.cat([tensor_color.resize_area(g[None, None].float() / 255.0, size, size)[:, 0] for g in grays])

    def merge(
        self, grays: Sequence[torch.Tensor], ab: torch.Tensor, small: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Put the chroma on each gray at full resolution.

        Args:
            grays: (H_i, W_i) uint8 on the device.
            ab: (B, 2, S, S) float32 chroma on the device, one per gray.
            small: (B, S, S) the model's input, from :meth:`model_input`, so the grays are not shrunk again.

        Returns:
            (3, H_i, W_i) uint8 sRGB on the device, one per gray.
        """
        rgbs: list[torch.Tensor] = [torch.empty(0)] * len(grays)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(grays):
            by_size.setdefault((int(g.shape[0]), int(g.shape[1])), []).append(i)  # same-sized scans merge at once
        for same in by_size.values():
            for start in range(0, len(same), _MERGE_CHUNK):
                chunk = same[start : start + _MERGE_CHUNK]
                merged = tensor_color.merge_chroma(
                    torch.stack([grays[i] for i in chunk]), ab[chunk], None if small is None else small[chunk]
                )
                for i, rgb in zip(chunk, merged, strict=True):
                    rgbs[i] = rgb
        return rgbs

    def encode(self, rgb: torch.Tensor, dpi: tuple[float, float] | None) -> bytes:
        """(3, H, W) uint8 on the device -> JPEG bytes on the host, encoded by nvJPEG, with its resolution."""
        from torchvision.io import encode_jpeg

        return set_jpeg_dpi(encode_jpeg(rgb, quality=JPEG_QUALITY).cpu().numpy().tobytes(), dpi)

    def merged(self) -> torch.cuda.Event | None:
        """Marks the work queued so far on this thread's stream (a merge), for :meth:`encode_on_host` to
        wait for; None on a CPU."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def encode_on_host(
        self, rgb: torch.Tensor, dpi: tuple[float, float] | None, after: torch.cuda.Event | None
    ) -> bytes:
        """The same image encoded by the host's CPU, as the CPU path encodes (the GIL released).

        For the writer threads that have nothing else to do: one process's nvJPEG encodes one image
        at a time behind torchvision's lock, and bounded the lane (``bench/RESULTS.md``). The image
        comes to the host on a stream of its own, into pinned memory, once ``after`` (from
        :meth:`merged`) has passed: a copy on the default stream would wait for the next batch's
        model, and the model for it.
        """
        hwc = rgb.permute(1, 2, 0)
        if after is None:
            return encode_image(hwc.contiguous().cpu().numpy(), "JPEG", dpi)
        assert self._copies is not None  # ``after`` comes from a GPU
        with torch.cuda.stream(self._copies):
            self._copies.wait_event(after)
            rgb.record_stream(self._copies)  # made on another stream: not to be reused before this copy
            host = torch.empty(hwc.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(hwc.contiguous(), non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        copied.synchronize()
        return encode_image(host.numpy(), "JPEG", dpi)
