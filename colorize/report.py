"""A run's report: one self-contained HTML page to look at what a run did.

``DEST/reports/<run_id>.html`` is built from the run's manifest (``manifests/<run_id>.csv``) and
its outputs: the counts per status, every failure and every already-colour source with its reason,
and a grid of before/after thumbnails for a fixed sample of the colorized files.

The page is one file that opens from disk or from an S3 presigned link: thumbnails are inlined as
``data:`` URIs, the style is inline, and nothing is loaded from anywhere. A Content-Security-Policy
forbids scripts and any fetch but ``data:`` images, and every name, reason and model id from the
manifest is HTML-escaped, so a file called ``<script>...</script>.jpg`` shows as text.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from colorize.imaging import decode_scan
from colorize.manifest import RUNS_PREFIX, STATUSES, read_csv, run_key
from colorize.storage import Storage, check_key, open_storage, split_uri

log = logging.getLogger(__name__)

REPORTS_PREFIX = "reports/"
DEFAULT_SAMPLE = 120  # before/after pairs on a page: about 5 MB of thumbnails at most
THUMB_SIDE = 320  # long side of a thumbnail, pixels
THUMB_QUALITY = 80
# Thumbnails are made in a few threads: reading (S3) and decoding (Pillow, OpenCV) release the GIL.
THUMB_WORKERS = 4

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STATUS_LABELS = {
    "colorized": "colorized",
    "skipped_done": "already done",
    "skipped_color": "already colour",
    "failed": "failed",
}


def report_key(run_id: str) -> str:
    """The report's key at the destination: ``reports/<run_id>.html`` (refused if it would escape)."""
    return check_key(f"{REPORTS_PREFIX}{run_id}.html")


def latest_run_id(dest: Storage) -> str | None:
    """The latest finished run at ``dest`` (run ids sort by start time), or None when there is none."""
    ids = [
        obj.key[len(RUNS_PREFIX) : -len(".csv")]
        for obj in dest.list(RUNS_PREFIX)
        if obj.key.endswith(".csv") and "/" not in obj.key[len(RUNS_PREFIX) :]  # not a killed run's parts
    ]
    return max(ids, default=None)


def sample_rows(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """At most ``n`` rows, chosen by a hash of the source URI, in source order.

    The choice depends only on the URIs, so rebuilding a report shows the same files, and a file
    shown once stays shown while the run's other files come and go.
    """
    if n <= 0 or frame.empty:
        return frame.iloc[0:0]
    digests = frame["source_uri"].map(lambda uri: hashlib.sha256(uri.encode("utf-8")).hexdigest())
    chosen = frame.loc[digests.sort_values(kind="stable").index[:n]]
    return chosen.sort_values("source_uri", kind="stable")


@dataclass(frozen=True)
class Thumb:
    """A thumbnail as a ``data:`` URI, or None with the reason it could not be made."""

    uri: str | None
    width: int = 0
    height: int = 0
    error: str = ""


def _fit(size: tuple[int, int], side: int = THUMB_SIDE) -> tuple[int, int]:
    """(width, height) scaled so the long side is at most ``side`` (never enlarged)."""
    w, h = size
    scale = min(1.0, side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def jpeg_data_uri(img: Image.Image) -> Thumb:
    """An image as an inline ``data:image/jpeg`` URI (pages and artifacts that load nothing else)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return Thumb(f"data:image/jpeg;base64,{data}", img.width, img.height)


def gray_thumb(data: bytes) -> Thumb:
    """The thumbnail of a source scan, decoded as the run decodes it (upright, gray)."""
    scan = decode_scan(data)
    gray = scan.gray if scan.bit_depth == 8 else (scan.gray >> 8).astype(np.uint8)
    w, h = _fit((scan.width, scan.height))
    small = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA) if (w, h) != (scan.width, scan.height) else gray
    return jpeg_data_uri(Image.fromarray(np.ascontiguousarray(small), "L"))


def colour_thumb(data: bytes) -> Thumb:
    """The thumbnail of an output (colour) image."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at a reduced scale, much faster
        img = ImageOps.exif_transpose(img) or img
        rgb = img.convert("RGB")
    rgb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return jpeg_data_uri(rgb)


class UriReader:
    """Reads whole objects by URI, opening one storage per parent folder or prefix.

    A manifest records full URIs; the storage for one is opened on its parent (as
    ``training.pairs`` does) and kept, so an S3 client is made once per prefix, not per file.
    """

    def __init__(self, endpoint_url: str | None = None):
        self.endpoint_url = endpoint_url
        self._storages: dict[str, Storage] = {}
        self._lock = threading.Lock()

    def read(self, uri: str) -> bytes:
        base, name = split_uri(uri)
        with self._lock:
            storage = self._storages.get(base)
            if storage is None:
                storage = self._storages[base] = open_storage(base, self.endpoint_url)
        return storage.read_bytes(name)


def _thumb(reader: UriReader, uri: str, colour: bool) -> Thumb:
    """A thumbnail, or a Thumb with the error: a missing or unreadable file never stops a report."""
    if not uri:
        return Thumb(None, error="no file recorded")
    try:
        data = reader.read(uri)
        return colour_thumb(data) if colour else gray_thumb(data)
    except Exception as err:  # noqa: BLE001 - any fault here becomes a placeholder, not a failed report
        log.warning("report: no thumbnail for %s: %s", uri, err)
        return Thumb(None, error=f"{type(err).__name__}: {err}")


def make_thumbs(rows: pd.DataFrame, reader: UriReader) -> list[tuple[Thumb, Thumb]]:
    """(before, after) thumbnails for each row, in row order."""
    jobs = [(u, False) for u in rows["source_uri"]] + [(u, True) for u in rows["output_uri"]]
    with ThreadPoolExecutor(THUMB_WORKERS) as pool:
        thumbs = list(pool.map(lambda job: _thumb(reader, *job), jobs))
    return list(zip(thumbs[: len(rows)], thumbs[len(rows) :], strict=True))


# --- HTML -------------------------------------------------------------------------------------------

_e = html.escape  # quote=True by default: safe in text and in quoted attributes alike


def source_root(uris: Iterable[str]) -> str:
    """The longest folder (or prefix) that holds every URI, with its trailing ``/``; "" if none."""
    uris = list(uris)
    if not uris:
        return ""
    common = uris[0] if len(uris) == 1 else _common_prefix(uris)
    return common[: common.rfind("/") + 1]


def _common_prefix(strings: Sequence[str]) -> str:
    low, high = min(strings), max(strings)  # the common prefix of the extremes is everyone's
    i = 0
    while i < min(len(low), len(high)) and low[i] == high[i]:
        i += 1
    return low[:i]


def _counts_html(counts: dict[str, int]) -> str:
    anchors = {"failed": "#failed", "skipped_color": "#skipped-color", "colorized": "#pairs"}
    items = []
    for status in STATUSES:
        label = f"<b>{counts.get(status, 0)}</b> {_e(STATUS_LABELS[status])}"
        if status in anchors and counts.get(status, 0):
            label = f'<a href="{anchors[status]}">{label}</a>'
        items.append(f'<li class="st-{status}" data-status="{status}">{label}</li>')
    items.append(f'<li class="st-total" data-status="total"><b>{sum(counts.values())}</b> files</li>')
    return '<ul class="counts">' + "".join(items) + "</ul>"


def _name_cell(uri: str, root: str) -> str:
    shown = uri[len(root) :] if root and uri.startswith(root) else uri
    return f'<span class="path" title="{_e(uri)}">{_e(shown)}</span>'


# Most rows a list of the page shows: a moved archive's run refuses every scan, and a page of a
# million rows (some 200 MB) opens nowhere; the run's manifest has them all.
LISTED_ROWS = 2000


def _reasons_html(section_id: str, title: str, rows: pd.DataFrame, root: str, run_id: str) -> str:
    """A table of the rows given (file, reason), the first ``LISTED_ROWS``; nothing when there are none."""
    if rows.empty:
        return ""
    shown = rows.head(LISTED_ROWS)
    body = "".join(
        f"<tr><td>{_name_cell(uri, root)}</td><td>{_e(reason)}</td></tr>"
        for uri, reason in zip(shown["source_uri"], shown["reason"], strict=True)
    )
    manifest = _e(run_key(run_id))
    more = (
        f'<p class="note">The first {len(shown):,} by path; <code>{manifest}</code> lists all {len(rows):,}.</p>'
        if len(rows) > len(shown)
        else ""
    )
    return (
        f'<section id="{section_id}"><h2>{_e(title)} ({len(rows)})</h2>{more}'
        f'<table class="reasons"><thead><tr><th>File</th><th>Reason</th></tr></thead><tbody>{body}</tbody></table>'
        "</section>"
    )


def _img_html(thumb: Thumb, alt: str) -> str:
    if thumb.uri is None:
        return f'<div class="ph" title="{_e(thumb.error)}">{_e(alt)}: not readable</div>'
    return f'<img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" alt="{_e(alt)}">'


def _pair_html(row: pd.Series, before: Thumb, after: Thumb, root: str) -> str:
    return (
        '<figure class="pair"><div class="imgs">'
        f"{_img_html(before, 'before')}{_img_html(after, 'after')}</div>"
        f"<figcaption>{_name_cell(row['source_uri'], root)}"
        f'<span class="dims">{int(row["width"])}&#215;{int(row["height"])}</span>'
        f'<span class="model">{_e(row["model_id"])}</span></figcaption></figure>'
    )


def _pairs_html(shown: pd.DataFrame, thumbs: list[tuple[Thumb, Thumb]], total: int, root: str) -> str:
    head = '<section id="pairs"><h2>Before and after</h2>'
    if total == 0:
        return f'{head}<p class="note">No file was colorized in this run.</p></section>'
    note = f"Showing {len(shown)} of {total} colorized files"
    if len(shown) < total:
        note += " (a fixed sample, chosen by a hash of each source's URI)"
    figures = "".join(
        _pair_html(row, before, after, root) for (_, row), (before, after) in zip(shown.iterrows(), thumbs, strict=True)
    )
    return f'{head}<p class="note" id="showing">{_e(note)}.</p><div class="grid">{figures}</div></section>'


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
padding:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}
code,.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;overflow-wrap:anywhere}
.meta{color:#555;margin:0}.meta span{margin-right:18px}
.counts{list-style:none;display:flex;flex-wrap:wrap;gap:10px;padding:0;margin:14px 0}
.counts li{background:#fff;border:1px solid #ddd;border-left:6px solid #999;border-radius:4px;padding:8px 14px}
.counts b{font-size:20px;margin-right:4px}.counts a{color:inherit;text-decoration:none}
.st-colorized{border-left-color:#2e7d32!important}.st-skipped_done{border-left-color:#1565c0!important}
.st-skipped_color{border-left-color:#f9a825!important}.st-failed{border-left-color:#c62828!important}
table.reasons{border-collapse:collapse;background:#fff;width:100%}
.reasons th,.reasons td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
.reasons th{background:#f0f0f0}#failed h2{color:#c62828}
.note{color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px;align-items:start}
.pair{margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px}
.imgs{display:flex;gap:4px;align-items:flex-start}
.imgs img,.imgs .ph{width:50%;height:auto;background:#eee}
.ph{display:flex;align-items:center;justify-content:center;min-height:100px;color:#888;font-size:12px}
figcaption{display:flex;flex-direction:column;font-size:12px;margin-top:4px;color:#444}
.model{color:#777}
"""

_PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="$csp">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Colorize run $run_id</title>
<style>$style</style>
</head>
<body>
<header>
<h1>Colorize run <code>$run_id</code></h1>
<p class="meta">$meta</p>
</header>
$counts
$done_note
$failed
$skipped_color
$partial
$pairs
</body>
</html>
""")


def _meta_html(run: pd.DataFrame, dest: Storage, root: str) -> str:
    models = sorted({m for m in run["model_id"] if m})
    finished = sorted(f for f in run["finished_at"] if f)
    parts = [
        f"Sources: <code>{_e(root or '-')}</code>",
        f"Destination: <code>{_e(dest.uri)}</code>",
        f"Model: <code>{_e(', '.join(models) or '-')}</code>",
    ]
    if finished:
        parts.append(f"Finished: {_e(finished[0])} &#8211; {_e(finished[-1])}")
    parts.append(f"Report made: {_e(datetime.now(UTC).isoformat(timespec='seconds'))}")
    return "".join(f"<span>{p}</span>" for p in parts)


def render_report(
    run_id: str, run: pd.DataFrame, dest: Storage, shown: pd.DataFrame, thumbs: list[tuple[Thumb, Thumb]]
) -> str:
    """The page for a run's manifest rows, given the sampled rows and their thumbnails."""
    run = run.sort_values("source_uri", kind="stable")
    root = source_root(run["source_uri"])
    counts = {k: int(v) for k, v in run["status"].value_counts().items()}
    by_status = {s: run[run["status"] == s] for s in STATUSES}
    done = counts.get("skipped_done", 0)
    done_note = (
        f'<p class="note" id="skipped-done">{done} files were already colorized and unchanged (not listed).</p>'
        if done
        else ""
    )
    return _PAGE.substitute(
        csp=CSP,
        run_id=_e(run_id),
        style=_STYLE,
        meta=_meta_html(run, dest, root),
        counts=_counts_html(counts),
        done_note=done_note,
        failed=_reasons_html("failed", "Failed", by_status["failed"], root, run_id),
        skipped_color=_reasons_html(
            "skipped-color", "Skipped: already colour", by_status["skipped_color"], root, run_id
        ),
        partial=_reasons_html(
            "colorized-in-part",
            "Colorized in part",
            by_status["colorized"][by_status["colorized"]["reason"] != ""],
            root,
            run_id,
        ),
        pairs=_pairs_html(shown, thumbs, len(by_status["colorized"]), root),
    )


def build_report(dest: Storage, run_id: str, sample: int = DEFAULT_SAMPLE, endpoint_url: str | None = None) -> str:
    """The HTML page of run ``run_id`` at ``dest``, from its manifest and its files.

    Failed and already-colour files are listed with their reasons (the first ``LISTED_ROWS`` of each
    kind, by path); already-done files are only
    counted; before/after thumbnails are shown for at most ``sample`` colorized files (see
    :func:`sample_rows`). A source or output that cannot be read shows a placeholder.

    Args:
        dest: the run's destination.
        run_id: the run; its manifest is ``manifests/<run_id>.csv``.
        sample: most before/after pairs shown (0: none).
        endpoint_url: S3-compatible endpoint for reading ``s3://`` sources and outputs.

    Raises:
        FileNotFoundError: the run has no manifest at ``dest``.
    """
    key = run_key(run_id)
    if dest.stat(key) is None:
        raise FileNotFoundError(f"no manifest for run {run_id!r} at {dest.uri_for(key)}")
    run = read_csv(dest, key)
    shown = sample_rows(run[run["status"] == "colorized"], sample)
    thumbs = make_thumbs(shown, UriReader(endpoint_url))
    return render_report(run_id, run, dest, shown, thumbs)


def write_report(dest: Storage, run_id: str, sample: int = DEFAULT_SAMPLE, endpoint_url: str | None = None) -> str:
    """Build the report of ``run_id`` (see :func:`build_report`) and write it atomically; return its key."""
    key = report_key(run_id)
    page = build_report(dest, run_id, sample=sample, endpoint_url=endpoint_url)
    dest.write_bytes(key, page.encode("utf-8"), "text/html; charset=utf-8")
    return key


def report_link(dest: Storage, key: str, expires_s: int) -> str:
    """A link that opens the report: presigned for ``expires_s`` seconds when the storage can presign.

    Storages that can (S3) have ``presign(key: str, expires_in: int) -> str``; it is not part of the
    :class:`Storage` protocol, so it is looked up. Otherwise a local report gets a ``file://`` URI,
    and any other storage its plain URI.
    """
    presign = getattr(dest, "presign", None)
    if callable(presign) and expires_s > 0:  # 0 turns presigning off: the plain s3:// URI is linked
        return str(presign(key, expires_s))
    uri = dest.uri_for(key)
    if "://" not in uri:
        return Path(uri).as_uri()
    return uri
