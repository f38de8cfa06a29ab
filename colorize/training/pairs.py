"""Training pairs: finding them in the three layouts curators use, and loading them checked.

Layouts:

* Victorian400: ``gray/``, ``resized/`` and ``original/`` side by side, matched by file name;
  the colour image comes from ``original/`` when present there, else from ``resized/``;
* a folder of colour photos only: the gray is derived as each photo's luminance;
* a CSV with ``gray_uri`` and ``color_uri`` columns (relative paths are relative to the CSV).

A bad pair never stops training: it is reported with its reason and left out.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from colorize.color import luma
from colorize.detect import detect_colour
from colorize.imaging import SCAN_EXTENSIONS, ScanError, decode_rgb, decode_scan
from colorize.storage import (
    ObjectInfo,
    Storage,
    is_hidden,
    join_uri,
    legible,
    nested_prefix,
    open_storage,
    read_uri,
    split_uri,
    unrecordable,
)

# Gray and colour of one pair may differ in size (gray/ at 256 beside original/ at full size), but
# must have the same shape: aspect ratios further apart than this are different pictures.
ASPECT_TOLERANCE = 0.02
# A photo smaller than this on a side teaches nothing at the model's size, and the measures of the
# held-out pairs (SSIM's 7x7 window) cannot be taken on it: such a pair is a problem, not a crash.
MIN_SIDE = 32


class PairError(ValueError):
    """A pair that cannot be trained on; ``str(err)`` says why."""


@dataclass(frozen=True)
class Pair:
    """One training example. ``gray_uri`` None means: derive the gray from the colour image."""

    name: str
    color_uri: str
    gray_uri: str | None = None


@dataclass(frozen=True)
class PairProblem:
    name: str
    reason: str


@dataclass(frozen=True)
class LoadedPair:
    """A checked pair, at the size it was loaded.

    Attributes:
        gray: (H, W) uint8 sRGB gray (the model's input side).
        rgb: (H, W, 3) uint8 sRGB colour (the target side).
        digest: sha256 over both files' bytes, for the training data's fingerprint.
    """

    name: str
    gray: np.ndarray
    rgb: np.ndarray
    digest: str


def _is_scan(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SCAN_EXTENSIONS


def discover_pairs(uri: str, leave_out: Iterable[str] = ()) -> tuple[list[Pair], list[PairProblem]]:
    """Find the pairs under ``uri`` (a folder, an S3 prefix, or a CSV file), sorted by name.

    A pair whose name no record can hold (not UTF-8, control characters) is a problem, as in a run.
    ``leave_out`` names folders (URIs) that may lie inside ``uri`` and hold no pairs, however many
    photos they hold: the registry's sample grids, say.
    """
    pairs, problems = _discover(uri, tuple(leave_out))
    refused = {p.name: why for p in pairs if (why := unrecordable(p.name)) is not None}
    problems += [PairProblem(legible(name), f"refused: {why}") for name, why in refused.items()]
    return [p for p in pairs if p.name not in refused], problems


def _discover(uri: str, leave_out: tuple[str, ...]) -> tuple[list[Pair], list[PairProblem]]:
    if uri.lower().endswith(".csv"):
        return _csv_pairs(uri)
    root = open_storage(uri)
    listed = list(root.list())  # once: an S3 prefix is listed by paged requests
    top = {o.key.split("/", 1)[0] for o in listed if "/" in o.key}
    if "gray" in top and ("resized" in top or "original" in top):
        return _victorian_pairs(root, listed)
    if same := [u for u in leave_out if open_storage(u).uri.rstrip("/") == root.uri.rstrip("/")]:
        raise ValueError(f"{same[0]} (registry or checkpoints) is the folder of pairs itself: give it one of its own")
    inside = tuple(p for p in (nested_prefix(root.uri, u) for u in leave_out) if p)
    pairs, problems = [], []
    for o in listed:
        if not _is_scan(o.key) or o.key.startswith(inside) or is_hidden(o.key):
            continue
        if o.problem:  # a pipe named like a photo (reading it would wait for ever), a dead link
            problems.append(PairProblem(o.key, f"not read: {o.problem}"))
        else:
            pairs.append(Pair(o.key, root.uri_for(o.key)))
    # One photo under two names that differ only in case or extension (A.PNG beside a.png, a.jpg
    # beside a.png) would be trained on twice, or, the split hashing names, on both sides of it.
    kept: dict[str, str] = {}
    unique = []
    for pair in sorted(pairs, key=lambda p: p.name):
        same = kept.setdefault(os.path.splitext(pair.name)[0].casefold(), pair.name)
        if same == pair.name:
            unique.append(pair)
        else:
            why = f"the name of {same} but for case or extension: taken for the same photo, trained on once"
            problems.append(PairProblem(pair.name, why + " (rename it if it is another)"))
    return unique, problems


def _usable(o: ObjectInfo) -> bool:
    """A listed photo that can be read: not hidden (``._name.jpg``, ``.thumbnails/``), not a problem."""
    return not o.problem and not is_hidden(o.key)


_V400 = ("gray", "resized", "original")


def _victorian_pairs(root: Storage, listed: list[ObjectInfo]) -> tuple[list[Pair], list[PairProblem]]:
    """Pairs by path inside ``gray/``, ``resized/`` and ``original/`` (``p1.png``, ``box1/p1.png``);
    photos beside those folders are problems: left out, and said."""
    stems: dict[str, dict[str, str]] = {folder: {} for folder in _V400}
    outside = []
    for o in listed:
        if not (_is_scan(o.key) and _usable(o)):
            continue
        folder, _, name = o.key.partition("/")
        if folder in stems and name:
            stems[folder][name] = root.uri_for(o.key)
        else:
            outside.append(o.key)
    gray, resized, original = stems["gray"], stems["resized"], stems["original"]
    pairs, problems = [], []
    for name in sorted(set(gray) | set(resized) | set(original)):
        color = original.get(name) or resized.get(name)
        if name not in gray:
            problems.append(PairProblem(name, "missing partner: no gray/ image of this name"))
        elif color is None:
            problems.append(PairProblem(name, "missing partner: neither original/ nor resized/ has it"))
        else:
            pairs.append(Pair(name, color, gray[name]))
    why = "not in gray/, resized/ or original/, which make this folder the Victorian400 layout: left out"
    return pairs, problems + [PairProblem(key, why) for key in outside]


def _csv_pairs(uri: str) -> tuple[list[Pair], list[PairProblem]]:
    base, _ = split_uri(uri)
    try:  # index_col=False: a spreadsheet's trailing comma on every row is no index column
        with warnings.catch_warnings():  # (pandas warns that it drops that empty last field)
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(io.BytesIO(read_uri(uri)), dtype=str, keep_default_na=False, index_col=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PairError(f"{uri} is not a CSV of pairs this tool reads (UTF-8, comma-separated): {err}") from None
    missing = {"gray_uri", "color_uri"} - set(frame.columns)
    if missing:
        raise PairError(f"{uri} needs the columns gray_uri and color_uri; missing {sorted(missing)}")

    folder = (base or ".").removeprefix("file://")

    def absolute(u: str) -> str:
        """A row's path as one name for one file: relative to the CSV's folder, ``./`` and ``..`` resolved."""
        if u.startswith("s3://"):
            return u
        path = u.removeprefix("file://")
        if path.startswith("/"):
            return os.path.normpath(path)
        joined = join_uri(folder, path)
        return joined if joined.startswith("s3://") else os.path.normpath(joined)

    pairs, problems = [], []
    seen: dict[tuple[str, str], int] = {}
    for i, (g, c) in enumerate(zip(frame["gray_uri"], frame["color_uri"], strict=True)):
        label, row = c or g or f"row {i + 2}", i + 2
        if not g or not c:
            problems.append(PairProblem(label, f"missing partner on CSV row {row}"))
        elif (first := seen.setdefault((absolute(g), absolute(c)), row)) != row:
            problems.append(PairProblem(label, f"CSV row {row} repeats row {first}: trained on once"))
        else:
            pairs.append(Pair(label, absolute(c), absolute(g)))
    return pairs, problems


def _read(uri: str) -> bytes:
    try:
        return read_uri(uri)
    except FileNotFoundError:
        raise PairError(f"missing partner: {uri} does not exist") from None
    except OSError as err:  # a folder, a file it may not read: this pair's fault; StorageError stops the training
        raise PairError(f"cannot read {uri}: {err.strerror or err}") from None


def _fit(img: np.ndarray, short_side: int | None) -> np.ndarray:
    """Shrink so the short side is ``short_side`` (never enlarge); (H, W[, C]) uint8 in and out."""
    if short_side is None or min(img.shape[:2]) <= short_side:
        return img
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def load_pair(pair: Pair, short_side: int | None = None) -> LoadedPair:
    """Read, decode and check a pair, then shrink it to ``short_side``.

    Raises:
        PairError: missing partner, unreadable file, size mismatch, or a "colour" image that is gray.
    """
    color_bytes = _read(pair.color_uri)
    try:
        rgb = decode_rgb(color_bytes)
    except ScanError as err:
        raise PairError(f"unreadable colour image: {err}") from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise PairError(f"too small: {rgb.shape[1]}x{rgb.shape[0]}; a pair needs {MIN_SIDE} px a side or more")
    if not detect_colour(_fit(rgb, 256)).is_colour:
        raise PairError("the colour image is gray (or toned monochrome): nothing to learn colour from")
    digest = hashlib.sha256(color_bytes)
    if pair.gray_uri is None:
        gray = luma(rgb)
    else:
        gray_bytes = _read(pair.gray_uri)
        digest.update(gray_bytes)
        try:
            g = decode_scan(gray_bytes)
        except ScanError as err:
            raise PairError(f"unreadable gray image: {err}") from None
        gray = g.gray if g.bit_depth == 8 else (g.gray >> 8).astype(np.uint8)
        (gh, gw), (ch, cw) = gray.shape, rgb.shape[:2]
        if abs(gw / gh - cw / ch) > ASPECT_TOLERANCE * (cw / ch):
            raise PairError(f"size mismatch: gray is {gw}x{gh}, colour is {cw}x{ch} (different shapes)")
        if (gh, gw) != (ch, cw):
            gray = cv2.resize(gray, (cw, ch), interpolation=cv2.INTER_AREA if gh > ch else cv2.INTER_CUBIC)
    return LoadedPair(pair.name, _fit(gray, short_side), _fit(rgb, short_side), digest.hexdigest())


def load_pairs(pairs: Iterable[Pair], short_side: int | None = None) -> tuple[list[LoadedPair], list[PairProblem]]:
    """Load every pair; the bad ones come back as problems instead."""
    loaded, problems = [], []
    for pair in pairs:
        try:
            loaded.append(load_pair(pair, short_side))
        except PairError as err:
            problems.append(PairProblem(pair.name, str(err)))
    return loaded, problems


def is_validation(name: str, fraction: float) -> bool:
    """Held-out membership fixed by a hash of the file name: stable as the pair set grows.

    The hash is of the name without folder and extension, so a pair keeps its side of the split
    when its files are converted (``x.webp`` -> ``x.jpg``) or moved.
    """
    stem = os.path.splitext(name.rsplit("/", 1)[-1])[0]
    bucket = int(hashlib.sha256(stem.encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000
    return bucket < fraction


def fingerprint(pairs: Iterable[LoadedPair]) -> str:
    """sha256 of the sorted (name, content digest) list: which data a model was trained on."""
    h = hashlib.sha256()
    for p in sorted(pairs, key=lambda p: p.name):
        h.update(f"{p.name}\t{p.digest}\n".encode())
    return h.hexdigest()
