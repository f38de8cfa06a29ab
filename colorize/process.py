"""Colorizing one shard: read, decode, reduce, batch, predict, merge at full resolution, encode, write.

Reading and decoding run ahead of the model in a thread pool; merging, encoding and writing run
behind it in another. OpenCV, Pillow's decoders, hashlib and file/network I/O release the GIL, so
these threads overlap with the forward pass instead of waiting for it.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
import torch

from colorize.c2pa_signing import load_signing_key, sign_c2pa
from colorize.color import COLOUR_METHOD, merge_chroma
from colorize.detect import detect_colour
from colorize.engine import Colorizer, model_input
from colorize.imaging import Scan, ScanError, check_output_size, content_type, decode_scan, encode_image
from colorize.inflight import TRIM_AFTER, InFlight, default_memory_budget, give_back_memory, write_peak_factor
from colorize.jpeg_lane import Decoded, JpegHeader, JpegLane, read_header
from colorize.manifest import ManifestRow, done_reason, format_mtime
from colorize.plan import RunOptions, WorkItem, done_row
from colorize.provenance import (
    UNMARKED_FORMATS,
    XMP_C2PA,
    ProvenanceInfo,
    SourceMetadata,
    embed,
    provenance_kind,
    source_metadata,
)
from colorize.provenance_read import recorded_in
from colorize.storage import ObjectInfo, Storage, StorageError

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass
class _Prepared:
    item: WorkItem
    scan: Scan | JpegHeader  # decoded on the CPU, or (JPEG lane) only its header read so far
    small: np.ndarray | None  # (S, S) float32 gray in [0, 1]; None in the JPEG lane (made on the GPU)
    sha256: str
    started: float
    source_meta: SourceMetadata  # the scan's descriptive metadata, carried into the output
    source_bytes: bytes | None = None  # the scan's bytes, kept until written only when signing (C2PA ingredient)
    jpeg: bytes | None = None  # JPEG lane: the file's bytes, kept until the GPU has decoded them


# Scans read ahead of the model, and written behind it, at most: 2 batches, or up to 4 batches while
# that stays under READ_AHEAD_CAP. On a CPU (batch 8) readers 4 batches ahead kept the cores busier
# (bench/RESULTS.md); the window stays proportional to the batch, so a smaller batch still means less
# memory for huge scans.
READ_AHEAD_CAP = 32
# The lane's writer threads that have nothing else to do encode some of each batch on the host's
# CPU, from the batch's other end than nvJPEG. False: nvJPEG alone (bench/processes.py's baseline).
HOST_ENCODES = True
# Memory budgets this process has said it reached (the warning is given once, not once per shard).
_BUDGETS_REACHED: set[int] = set()
# How much less CPU priority the reader and writer threads get than the model's thread.
IO_NICENESS = 10


def io_workers() -> int:
    """Threads for reading/decoding and for encoding/writing (each pool gets this many)."""
    return max(2, min(8, os.cpu_count() or 2))


def read_ahead(batch_size: int, workers: int) -> int:
    """How many scans a shard holds in flight on each side of the model (bounds its memory)."""
    return max(2 * batch_size, min(4 * batch_size, READ_AHEAD_CAP), workers)


def in_this_context(fn: Callable[..., _T]) -> Callable[..., _T]:
    """``fn``, to run on a pool thread in a copy of the calling thread's context variables.

    Threads do not inherit them, and an orchestrator keeps there which run a log record belongs to:
    with the copy, a reader's or a writer's warnings are filed under the run as the shard's are.
    """
    context = contextvars.copy_context()
    return functools.partial(context.run, fn)


def yield_to_the_model() -> None:
    """Lower the calling thread's CPU priority (Linux; elsewhere nothing): a reader or writer pool's initializer.

    On a CPU the model's thread is the pipeline's bottleneck, while the readers and writers wait for
    work half the time (a py-spy profile of ``bench/throughput.py``'s (c) on 2 cores). When they
    did run, they took turns on the model's core, so the model ran slower than alone and the cores
    still idled. At a lower priority they use what the model leaves: with the wider window (c) went
    from 24.9 to 25.8-27.3 images/s there (``bench/RESULTS.md``). On a GPU host the same thread
    feeds the GPU. Linux alone gives threads their own niceness; the value is relative to the
    process's.
    """
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + IO_NICENESS))
    except OSError:  # e.g. a sandbox that forbids it: full speed, only less well shared
        log.debug("could not lower an I/O thread's priority", exc_info=True)


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
        on_gpu = colorizer.device.type == "cuda" and colorizer.model.color_mode == "lab"
        self.lane = JpegLane(colorizer.device) if opts.gpu_jpeg and on_gpu else None
        self._gpu_encoder: ThreadPoolExecutor | None = None  # the lane's merge/encode thread, during run()

    def _row(self, item: WorkItem, status: str, reason: str = "", **kw: object) -> ManifestRow:
        return ManifestRow(
            run_id=self.opts.run_id, source_uri=self.source.uri_for(item.key), source_size=item.size,
            source_mtime=format_mtime(item.mtime), source_etag=item.etag or "", status=status,
            reason=reason, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def _scan_fields(self, scan: Scan | JpegHeader, sha: str) -> dict[str, object]:
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
        if len(data) != item.size:  # a scanner still writing it, or a replacement: its row would mix the two
            return self._row(
                item, "failed", f"source file changed between listing ({item.size} bytes) and reading ({len(data)} "
                "bytes): still being written, or replaced; the next run takes it as it is then",
            )  # fmt: skip
        sha = hashlib.sha256(data).hexdigest()
        if item.verify_sha256 and sha == item.verify_sha256 and item.previous is not None:
            obj = ObjectInfo(item.key, item.size, item.mtime, item.etag)
            return done_row(self.opts, self.source, obj, item.previous, "content unchanged (same sha256)")
        header = read_header(data, self.opts.max_pixels) if self.lane and item.output_format == "JPEG" else None
        if header is not None:
            meta = source_metadata(data, self.source.uri_for(item.key))
            if (row := self._already_ours(item, header, sha, meta, started)) is not None:
                return row
            if (row := self._adopt(item, header, sha, meta, started)) is not None:
                return row
            return _Prepared(item, header, None, sha, started, meta, data if self.signing_key else None, jpeg=data)
        return self._decode(item, data, sha, started)

    def _decode(self, item: WorkItem, data: bytes, sha: str, started: float) -> _Prepared | ManifestRow:
        """The CPU way: decode, check for colour, and reduce to the model's input."""
        try:
            scan = decode_scan(data, self.opts.max_pixels)
        except ScanError as err:
            return self._row(item, "failed", str(err), source_sha256=sha, seconds=time.perf_counter() - started)
        try:  # before the model spends anything on it
            check_output_size(item.output_format, scan.width, scan.height)
        except ScanError as err:
            fields = self._scan_fields(scan, sha)
            return self._row(item, "failed", str(err), seconds=time.perf_counter() - started, **fields)
        if (row := self._colour_row(item, scan, scan.preview, sha, started)) is not None:
            return row
        meta = source_metadata(data, self.source.uri_for(item.key))
        if (row := self._already_ours(item, scan, sha, meta, started)) is not None:
            return row
        if (row := self._adopt(item, scan, sha, meta, started)) is not None:
            return row
        small = model_input(scan.gray, self.colorizer.image_size)
        return _Prepared(item, scan, small, sha, started, meta, data if self.signing_key else None)

    def _colour_row(
        self, item: WorkItem, scan: Scan | JpegHeader, preview: np.ndarray | None, sha: str, started: float
    ) -> ManifestRow | None:
        """The ``skipped_color`` row of a source in colour (unless colour sources are asked for)."""
        if preview is None or self.opts.colorize_color:
            return None
        verdict = detect_colour(preview)
        return self._skipped_colour(item, scan, sha, started, verdict.reason) if verdict.is_colour else None

    def _already_ours(
        self, item: WorkItem, scan: Scan | JpegHeader, sha: str, meta: SourceMetadata, started: float
    ) -> ManifestRow | None:
        """The colour detector's backstop: a timid model's output can look toned, not coloured."""
        if not meta.colorized_by_us or self.opts.colorize_color:
            return None
        reason = "already colorized: its metadata says archive-colorize made it; pass --colorize-color to redo"
        return self._skipped_colour(item, scan, sha, started, reason)

    def _adopt(
        self, item: WorkItem, scan: Scan | JpegHeader, sha: str, meta: SourceMetadata, started: float
    ) -> ManifestRow | None:
        """The row of a file at the output's path that may not be the recorded output of this
        source: ``skipped_done`` for an output this scan and this model made, whole; ``failed`` for
        a file no record gives to this source that this software did not make (a person's own colour
        version, say), and for any made from another scan (an overlapping run's), which are never
        replaced unless ``--force``; None to make it again.

        Its XMP says from which scan (URI and sha256), by which model (sha256) and how (colour
        method). A scan of the same bytes at another URI is this archive remounted: its output is
        this one's. A signing run makes its outputs again: the one found may be unsigned. A BMP
        holds no XMP, so whose it is cannot be told: it is made again.
        """
        if not item.adopt:
            return None
        try:
            data = self.dest.read_bytes(item.output_key)
        except FileNotFoundError:
            return None
        made = recorded_in(data)
        there = self.dest.uri_for(item.output_key)
        if not (made.get("run_id") or made.get("source_sha256")):  # not ours, or it cannot say (a BMP)
            if not item.unrecorded or item.output_format in UNMARKED_FORMATS:
                return None
            refusal = "neither the ledger nor its metadata says archive-colorize made it"
        elif made.get("source_uri", "") not in ("", self.source.uri_for(item.key)) and made.get("source_sha256") != sha:
            refusal = (
                f"its metadata says it was made from another scan, {made['source_uri']}"  # whatever the ledger says
            )
        else:
            refusal = ""
        if refusal:
            reason = (
                f"not written: {there} is already there, and {refusal}; move it away, or pass --force to replace it"
            )
            fields = self._scan_fields(scan, sha)
            return self._row(item, "failed", reason, seconds=time.perf_counter() - started, **fields)
        if self.signing_key is not None or not self.model_sha256:
            return None
        if (made.get("source_sha256"), made.get("model_sha256"), made.get("colour_method")) != (
            sha, self.model_sha256, COLOUR_METHOD
        ):  # fmt: skip
            return None
        try:  # a file cut short (a failing disk, a copy that stopped) keeps the XMP at its head
            decode_scan(data, self.opts.max_pixels)
        except ScanError:
            log.warning("%s: made by this model from this scan but damaged; making it again", there)
            return None
        why = f"found whole, made by run {made.get('run_id') or '?'} before it stopped"
        reason = done_reason(why, self.colorizer.model_id, self._notes(scan, meta))
        provenance = provenance_kind(item.output_format, False)
        return self._output_row(item, "skipped_done", reason, data, provenance, scan, sha, started)

    def _output_row(
        self, item: WorkItem, status: str, reason: str, output: bytes, provenance: str,
        scan: Scan | JpegHeader, sha: str, started: float,
    ) -> ManifestRow:  # fmt: skip
        """The row of a source whose output (``output``, its bytes) this model made and is at its path."""
        return self._row(
            item, status, reason, output_uri=self.dest.uri_for(item.output_key),
            output_sha256=hashlib.sha256(output).hexdigest(), output_size=len(output), model_id=self.colorizer.model_id,
            provenance=provenance, model_sha256=self.model_sha256, colour_method=COLOUR_METHOD,
            seconds=round(time.perf_counter() - started, 4), **self._scan_fields(scan, sha),
        )  # fmt: skip

    @staticmethod
    def _notes(scan: Scan | JpegHeader, meta: SourceMetadata) -> list[str]:
        """What of the scan its output lacks: the pages after the first, metadata it cannot hold."""
        pages = f"page 1 of {scan.pages} colorized; the other pages are not in the output" if scan.pages > 1 else ""
        return [pages, scan.note, meta.problem]

    def _skipped_colour(
        self, item: WorkItem, scan: Scan | JpegHeader, sha: str, started: float, reason: str
    ) -> ManifestRow:
        fields = self._scan_fields(scan, sha)
        return self._row(item, "skipped_color", reason, seconds=time.perf_counter() - started, **fields)

    def _finish(self, p: _Prepared, ab: np.ndarray) -> ManifestRow:
        assert isinstance(p.scan, Scan)
        rgb = merge_chroma(p.scan.gray, ab, p.small)
        return self._deliver(p, encode_image(rgb, p.item.output_format, p.scan.dpi))

    def _deliver(self, p: _Prepared, encoded: bytes) -> ManifestRow:
        """Mark an encoded output with its provenance, write it, and make its row."""
        lost: list[str] = []
        data, provenance = self._mark(p, encoded, lost)
        self.dest.write_bytes(p.item.output_key, data, content_type(p.item.output_format))
        # Not a failure, but part of the source is not in the output: the record says so.
        notes = "; ".join(n for n in [*self._notes(p.scan, p.source_meta), *lost] if n)
        return self._output_row(p.item, "colorized", notes, data, provenance, p.scan, p.sha256, p.started)

    def _mark(self, p: _Prepared, data: bytes, lost: list[str]) -> tuple[bytes, str]:
        """Embed provenance (and a C2PA signature when signing) in an encoded output; say which it got.
        What of the scan's metadata the output could not hold is added to ``lost``."""
        fmt = p.item.output_format
        info = ProvenanceInfo(
            self.source.uri_for(p.item.key), p.sha256, self.colorizer.model_id, self.model_sha256, self.opts.run_id
        )
        data = embed(data, fmt, p.source_meta, info, lost)
        if self.signing_key is None or p.source_bytes is None or provenance_kind(fmt, True) != XMP_C2PA:
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
        window = read_ahead(self.opts.batch_size, workers)
        held = InFlight(self.opts.memory_budget or default_memory_budget(), workers)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="decode", initializer=yield_to_the_model) as readers,
            ThreadPoolExecutor(workers, thread_name_prefix="encode", initializer=yield_to_the_model) as writers,
            # The JPEG lane merges and encodes here, overlapping the next batch's decoding and model.
            ThreadPoolExecutor(1, thread_name_prefix="gpu-encode") as self._gpu_encoder,
        ):
            writes: deque[tuple[int, Future[ManifestRow | _Prepared]]] = deque()
            # Batches of one kind: decoded on the CPU, or JPEG bytes for the GPU to decode.
            batches: dict[bool, list[tuple[int, _Prepared]]] = {False: [], True: []}

            def done(index: int, row: ManifestRow) -> None:
                rows[index] = row
                if held.written(index) >= TRIM_AFTER:
                    give_back_memory()
                if on_row:
                    on_row(row)

            def collect(keep: int) -> None:
                """Take finished writes in order; wait while more than ``keep`` are in flight."""
                while writes and (len(writes) > keep or writes[0][1].done()):
                    index, fut = writes.popleft()
                    row = fut.result()
                    assert isinstance(row, ManifestRow)
                    done(index, row)

            def make_room() -> bool:
                """Send a partial batch on, or wait for the oldest write; False when neither is left."""
                if waiting := next((b for b in batches.values() if b), None):
                    predict(waiting)
                elif writes:
                    collect(keep=len(writes) - 1)
                else:
                    return False
                return True

            def predict(batch: list[tuple[int, _Prepared]]) -> None:
                self._predict(batch, writers, writes)
                for index, _ in batch:
                    held.to_write(index)
                batch.clear()

            for index, prepared in self._prefetch(readers, items, window, held.may_read, make_room):
                if isinstance(prepared, ManifestRow):
                    done(index, prepared)
                    continue
                held.read(index, _held_bytes(prepared), write_peak_factor(prepared.item.output_format))
                batch = batches[prepared.jpeg is not None]
                batch.append((index, prepared))
                # Over the memory budget (huge masters), a partial batch goes on, to free its scans.
                over = held.over()
                if over and held.budget not in _BUDGETS_REACHED:
                    _BUDGETS_REACHED.add(held.budget)  # once per process: why a run of huge masters slows down
                    log.warning(
                        "memory budget of %.2f GB reached (largest scan %.0f MB of gray): fewer scans in "
                        "flight, down to one at a time; --memory-gb sets the budget",
                        held.budget / 2**30, held.largest / 2**20,
                    )  # fmt: skip
                if len(batch) == self.opts.batch_size or over:
                    predict(batch)
                collect(keep=window)  # bounds the full-resolution images held in memory
                while writes and held.over():
                    collect(keep=len(writes) - 1)
            for batch in batches.values():
                if batch:
                    predict(batch)
            collect(keep=0)
        return [rows[i] for i in range(len(items))]

    def _prefetch(
        self,
        pool: ThreadPoolExecutor,
        items: list[WorkItem],
        window: int,
        may_read: Callable[[int], bool],
        make_room: Callable[[], bool],
    ) -> Iterator[tuple[int, ManifestRow | _Prepared]]:
        """Prepared items in order, with at most ``window`` reads in flight (bounded memory).

        A further read starts only when ``may_read(reads in flight)`` says it fits in memory. With
        no read in flight, ``make_room()`` waits for writes to finish until it fits; when none is
        left to wait for, the read goes on over the budget (a scan larger than the budget, alone).
        """
        queue: deque[tuple[int, Future[ManifestRow | _Prepared]]] = deque()
        upcoming = iter(enumerate(items))
        nxt = next(upcoming, None)
        while nxt is not None or queue:
            while nxt is not None and len(queue) < window:
                if not may_read(len(queue)):
                    if queue:
                        break  # the reads in flight come first
                    if make_room():
                        continue
                index, item = nxt
                queue.append(
                    (index, pool.submit(in_this_context(self._guard), item, lambda it=item: self._prepare(it)))
                )
                nxt = next(upcoming, None)
            index, fut = queue.popleft()
            yield index, fut.result()

    def _predict(
        self,
        batch: list[tuple[int, _Prepared]],
        writers: ThreadPoolExecutor,
        writes: deque[tuple[int, Future[ManifestRow | _Prepared]]],
    ) -> None:
        if batch[0][1].jpeg is not None:
            self._predict_on_gpu(batch, writers, writes)
            return
        gray = np.stack([p.small for _, p in batch if p.small is not None])  # (B, S, S)
        try:
            ab = self.colorizer.predict_ab(gray)  # (B, S, S, 2)
        except Exception as err:  # noqa: BLE001 - e.g. CUDA OOM on a huge batch: record, go on
            log.exception("model failed on a batch")
            self._fail_batch(batch, writes, f"model failed on this batch: {type(err).__name__}: {err}")
            return
        for (index, p), chroma in zip(batch, ab, strict=True):
            writes.append(
                (index, writers.submit(in_this_context(self._guard), p.item, lambda p=p, c=chroma: self._finish(p, c)))
            )

    def _predict_on_gpu(
        self,
        batch: list[tuple[int, _Prepared]],
        writers: ThreadPoolExecutor,
        writes: deque[tuple[int, Future[ManifestRow | _Prepared]]],
    ) -> None:
        """The JPEG lane: decode, predict, merge and encode on the GPU; the writers mark and write."""
        assert self.lane is not None
        decoded = self.lane.decode([p.jpeg or b"" for _, p in batch], [p.scan for _, p in batch])  # type: ignore[misc]
        ready: list[tuple[int, _Prepared, Decoded]] = []
        on_cpu: list[tuple[int, _Prepared]] = []
        for (index, p), d in zip(batch, decoded, strict=True):
            data, p.jpeg = p.jpeg or b"", None
            if d is None:  # the GPU decoder refused it: the CPU way decodes it, or says what is wrong
                row_or_p = self._guard(p.item, lambda p=p, data=data: self._decode(p.item, data, p.sha256, p.started))
                if isinstance(row_or_p, ManifestRow):
                    writes.append((index, _done(row_or_p)))
                else:
                    on_cpu.append((index, row_or_p))
            elif (row := self._colour_row(p.item, p.scan, d.preview, p.sha256, p.started)) is not None:
                writes.append((index, _done(row)))
            else:
                ready.append((index, p, d))
        if on_cpu:
            self._predict(on_cpu, writers, writes)
        if not ready:
            return
        grays = [d.gray for _, _, d in ready]
        try:
            small = self.lane.model_input(grays, self.colorizer.image_size)
            ab = self.colorizer.predict_ab_tensor(small)
        except Exception as err:  # noqa: BLE001 - e.g. CUDA OOM on a huge batch: record, go on
            log.exception("model failed on a batch")
            reason = f"model failed on this batch: {type(err).__name__}: {err}"
            self._fail_batch([(i, p) for i, p, _ in ready], writes, reason)
            return
        outputs: list[Future[ManifestRow | _Prepared]] = [Future() for _ in ready]
        writes.extend((index, fut) for (index, _, _), fut in zip(ready, outputs, strict=True))
        prepared = [p for _, p, _ in ready]
        assert self._gpu_encoder is not None
        self._gpu_encoder.submit(
            in_this_context(self._merge_encode_deliver), prepared, grays, ab, small, outputs, writers
        )

    def _merge_encode_deliver(
        self,
        prepared: list[_Prepared],
        grays: list[torch.Tensor],
        ab: torch.Tensor,
        small: torch.Tensor,
        outputs: list[Future[ManifestRow | _Prepared]],
        writers: ThreadPoolExecutor,
    ) -> None:
        """On the encoder thread: merge a batch on the GPU, then encode it from both ends at once.

        nvJPEG, here, takes the batch's images from the front; writer threads with nothing else to do
        take them from the back and encode on the host (:data:`HOST_ENCODES`). Each image is taken
        once (a deque's pops are atomic), and each encoded file is marked and written by a writer.
        Every future in ``outputs`` gets resolved, with a row or with the error that stops the run,
        so that the shard never waits forever.
        """
        lane = self.lane
        assert lane is not None
        try:
            rgbs = lane.merge(grays, ab, small)
            merged = lane.merged()
        except Exception as err:  # noqa: BLE001 - e.g. CUDA OOM: these files fail, the run goes on
            log.exception("GPU merge failed on a batch")
            for p, fut in zip(prepared, outputs, strict=True):
                fut.set_result(self._row(p.item, "failed", f"GPU failed on this batch: {type(err).__name__}: {err}"))
            return
        left = deque(range(len(prepared)))

        def deliver(i: int, encoded: Callable[[], bytes]) -> None:  # on a writer thread
            p = prepared[i]
            _settle(outputs[i], lambda: self._guard(p.item, lambda: self._deliver(p, encoded())))

        def on_host(i: int) -> Callable[[], bytes]:
            return lambda: lane.encode_on_host(rgbs[i], prepared[i].scan.dpi, merged)

        def take_from_the_back() -> None:  # a writer's task: one image, then this task again behind the queued writes
            try:
                i = left.pop()
            except IndexError:
                return
            # Queued before this output is resolved: the pool closes only once every output is.
            writers.submit(in_this_context(take_from_the_back))
            deliver(i, on_host(i))

        if HOST_ENCODES:
            for _ in range(min(len(prepared), io_workers())):
                writers.submit(in_this_context(take_from_the_back))
        while True:
            try:
                i = left.popleft()
            except IndexError:
                break
            try:
                data = lane.encode(rgbs[i], prepared[i].scan.dpi)
            except Exception:  # noqa: BLE001 - e.g. out of GPU memory: the host encodes it instead
                log.warning("nvJPEG could not encode %s; the CPU encodes it", prepared[i].item.key, exc_info=True)
                writers.submit(in_this_context(deliver), i, on_host(i))
                continue
            writers.submit(in_this_context(deliver), i, lambda d=data: d)

    def _fail_batch(
        self,
        batch: list[tuple[int, _Prepared]],
        writes: deque[tuple[int, Future[ManifestRow | _Prepared]]],
        reason: str,
    ) -> None:
        for index, p in batch:
            writes.append((index, _done(self._row(p.item, "failed", reason))))


def _settle(target: Future[ManifestRow | _Prepared], fn: Callable[[], ManifestRow | _Prepared]) -> None:
    """Resolve ``target`` with what ``fn`` returns, or with the error it raises."""
    try:
        target.set_result(fn())
    except BaseException as err:  # noqa: BLE001 - handed on whole, to stop the run where it is awaited
        target.set_exception(err)


def _held_bytes(p: _Prepared) -> int:
    """What a prepared scan holds in memory: its full-resolution gray, or (JPEG lane) its file."""
    return p.scan.gray.nbytes if isinstance(p.scan, Scan) else len(p.jpeg or b"")


def _done(row: ManifestRow) -> Future[ManifestRow | _Prepared]:
    """A row that is already made, queued among the writes so that rows keep their order."""
    fut: Future[ManifestRow | _Prepared] = Future()
    fut.set_result(row)
    return fut
