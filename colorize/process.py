"""Colorizing one shard: read, decode, reduce, batch, predict, merge at full resolution, encode, write.

Reading and decoding run ahead of the model in a thread pool; merging, encoding and writing run
behind it in another. OpenCV, Pillow's codecs, hashlib and file/network I/O release the GIL, so
these threads overlap with the forward pass instead of waiting for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from colorize.color import merge_chroma
from colorize.detect import detect_colour
from colorize.engine import Colorizer, model_input
from colorize.imaging import Scan, ScanError, content_type, decode_scan, encode_image
from colorize.manifest import ManifestRow, format_mtime
from colorize.plan import RunOptions, WorkItem, done_row
from colorize.provenance import (
    NONE,
    ProvenanceInfo,
    SourceMetadata,
    embed,
    load_signing_key,
    provenance_kind,
    sign_c2pa,
    source_metadata,
)
from colorize.storage import ObjectInfo, Storage, StorageError

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    item: WorkItem
    scan: Scan
    small: np.ndarray  # (S, S) float32 gray in [0, 1]
    sha256: str
    started: float
    source_meta: SourceMetadata  # the scan's descriptive metadata, carried into the output
    source_bytes: bytes | None = None  # the scan's bytes, kept until written only when signing (C2PA ingredient)


def io_workers() -> int:
    """Threads for reading/decoding and for encoding/writing (each pool gets this many)."""
    return max(2, min(8, os.cpu_count() or 2))


class ShardProcessor:
    """Colorizes work items with one model; reusable across shards of a run."""

    def __init__(self, opts: RunOptions, colorizer: Colorizer, source: Storage, dest: Storage):
        self.opts = opts
        self.colorizer = colorizer
        self.source = source
        self.dest = dest
        self.model_sha256 = str(colorizer.model.card.get("sha256", ""))
        # Files are processed in parallel by our own threads; OpenCV splitting each call over every
        # core on top of that multiplies the threads. Suspected cause of the 16-core H200 run's
        # 0.139 CPU-s per scan without the model, against 0.047 on 2 cores (bench/RESULTS.md); the
        # cap was not re-measured there.
        cv2.setNumThreads(1)
        signing = opts.sign_cert and opts.sign_key
        self.signing_key = load_signing_key(opts.sign_cert, opts.sign_key, opts.endpoint_url) if signing else None

    def _row(self, item: WorkItem, status: str, reason: str = "", **kw: object) -> ManifestRow:
        return ManifestRow(
            run_id=self.opts.run_id, source_uri=self.source.uri_for(item.key), source_size=item.size,
            source_mtime=format_mtime(item.mtime), source_etag=item.etag or "", status=status,
            reason=reason, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def _scan_fields(self, scan: Scan, sha: str) -> dict[str, object]:
        return dict(
            source_sha256=sha, width=scan.width, height=scan.height, mode=scan.mode,
            bit_depth=scan.bit_depth, pages=scan.pages,
        )  # fmt: skip

    def _prepare(self, item: WorkItem) -> _Prepared | ManifestRow:
        started = time.perf_counter()
        try:
            data = self.source.read_bytes(item.key)
        except FileNotFoundError:
            return self._row(item, "failed", "source file disappeared between listing and reading")
        sha = hashlib.sha256(data).hexdigest()
        if item.verify_sha256 and sha == item.verify_sha256 and item.previous is not None:
            obj = ObjectInfo(item.key, item.size, item.mtime, item.etag)
            return done_row(self.opts, self.source, obj, item.previous, "content unchanged (same sha256)")
        try:
            scan = decode_scan(data, self.opts.max_pixels)
        except ScanError as err:
            return self._row(item, "failed", str(err), source_sha256=sha, seconds=time.perf_counter() - started)
        if scan.preview is not None and not self.opts.colorize_color:
            verdict = detect_colour(scan.preview)
            if verdict.is_colour:
                return self._row(
                    item, "skipped_color", verdict.reason, seconds=time.perf_counter() - started,
                    **self._scan_fields(scan, sha),
                )  # fmt: skip
        meta = source_metadata(data)
        if meta.colorized_by_us and not self.opts.colorize_color:
            # The colour detector's backstop: a timid model's output can look toned, not coloured.
            reason = "already colorized: its metadata says archive-colorize made it; pass --colorize-color to redo"
            return self._row(
                item, "skipped_color", reason, seconds=time.perf_counter() - started, **self._scan_fields(scan, sha)
            )
        small = model_input(scan.gray, self.colorizer.image_size)
        return _Prepared(item, scan, small, sha, started, meta, data if self.signing_key else None)

    def _finish(self, p: _Prepared, ab: np.ndarray) -> ManifestRow:
        rgb = merge_chroma(p.scan.gray, ab)
        data, provenance = self._mark(p, encode_image(rgb, p.item.output_format, p.scan.dpi))
        self.dest.write_bytes(p.item.output_key, data, content_type(p.item.output_format))
        return self._row(
            p.item, "colorized", output_uri=self.dest.uri_for(p.item.output_key),
            output_sha256=hashlib.sha256(data).hexdigest(), model_id=self.colorizer.model_id,
            provenance=provenance, model_sha256=self.model_sha256,
            seconds=round(time.perf_counter() - p.started, 4), **self._scan_fields(p.scan, p.sha256),
        )  # fmt: skip

    def _mark(self, p: _Prepared, data: bytes) -> tuple[bytes, str]:
        """Embed provenance (and a C2PA signature when signing) in an encoded output; say which it got."""
        fmt = p.item.output_format
        info = ProvenanceInfo(
            self.source.uri_for(p.item.key), p.sha256, self.colorizer.model_id, self.model_sha256, self.opts.run_id
        )
        data = embed(data, fmt, p.source_meta, info)
        if self.signing_key is None or p.source_bytes is None or provenance_kind(fmt, True) == NONE:
            return data, provenance_kind(fmt, False)
        title = p.item.output_key.rpartition("/")[2]
        data = sign_c2pa(
            data, fmt, info, self.signing_key, source=p.source_bytes, source_format=p.scan.format, title=title
        )
        return data, provenance_kind(fmt, True)

    def _guard(self, item: WorkItem, fn: Callable[[], ManifestRow | _Prepared]) -> ManifestRow | _Prepared:
        """Per-file faults become ``failed`` rows; faults of the storage itself stop the run."""
        try:
            return fn()
        except StorageError:
            raise
        except MemoryError:
            return self._row(item, "failed", "out of memory while processing this image")
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the run; the reason is kept
            log.exception("failed on %s", item.key)
            return self._row(item, "failed", f"{type(err).__name__}: {err}")

    def run(self, items: Iterable[WorkItem], on_row: Callable[[ManifestRow], None] | None = None) -> list[ManifestRow]:
        """Colorize ``items``; return one row per item, in item order."""
        items = list(items)
        rows: dict[int, ManifestRow] = {}
        workers = io_workers()
        window = max(2 * self.opts.batch_size, workers)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="decode") as readers,
            ThreadPoolExecutor(workers, thread_name_prefix="encode") as writers,
        ):
            writes: deque[tuple[int, Future[ManifestRow | _Prepared]]] = deque()

            def collect(keep: int) -> None:
                """Take finished writes in order; wait while more than ``keep`` are in flight."""
                while writes and (len(writes) > keep or writes[0][1].done()):
                    index, fut = writes.popleft()
                    row = fut.result()
                    assert isinstance(row, ManifestRow)
                    rows[index] = row
                    if on_row:
                        on_row(row)

            batch: list[tuple[int, _Prepared]] = []
            for index, prepared in self._prefetch(readers, items, window):
                if isinstance(prepared, ManifestRow):
                    rows[index] = prepared
                    if on_row:
                        on_row(prepared)
                    continue
                batch.append((index, prepared))
                if len(batch) == self.opts.batch_size:
                    self._predict(batch, writers, writes)
                    batch = []
                collect(keep=window)  # bounds the full-resolution images held in memory
            if batch:
                self._predict(batch, writers, writes)
            collect(keep=0)
        return [rows[i] for i in range(len(items))]

    def _prefetch(
        self, pool: ThreadPoolExecutor, items: list[WorkItem], window: int
    ) -> Iterator[tuple[int, ManifestRow | _Prepared]]:
        """Prepared items in order, with at most ``window`` reads in flight (bounded memory)."""
        queue: deque[tuple[int, Future[ManifestRow | _Prepared]]] = deque()
        upcoming = iter(enumerate(items))
        for index, item in upcoming:
            queue.append((index, pool.submit(self._guard, item, lambda it=item: self._prepare(it))))
            if len(queue) >= window:
                break
        while queue:
            index, fut = queue.popleft()
            nxt = next(upcoming, None)
            if nxt is not None:
                queue.append((nxt[0], pool.submit(self._guard, nxt[1], lambda it=nxt[1]: self._prepare(it))))
            yield index, fut.result()

    def _predict(
        self,
        batch: list[tuple[int, _Prepared]],
        writers: ThreadPoolExecutor,
        writes: deque[tuple[int, Future[ManifestRow | _Prepared]]],
    ) -> None:
        gray = np.stack([p.small for _, p in batch])  # (B, S, S)
        try:
            ab = self.colorizer.predict_ab(gray)  # (B, S, S, 2)
        except Exception as err:  # noqa: BLE001 - e.g. CUDA OOM on a huge batch: record, go on
            log.exception("model failed on a batch")
            for index, p in batch:
                fut: Future[ManifestRow | _Prepared] = Future()
                fut.set_result(self._row(p.item, "failed", f"model failed on this batch: {type(err).__name__}: {err}"))
                writes.append((index, fut))
            return
        for (index, p), chroma in zip(batch, ab, strict=True):
            writes.append((index, writers.submit(self._guard, p.item, lambda p=p, c=chroma: self._finish(p, c))))
