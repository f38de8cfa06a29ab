"""A shard's threads: readers and writers yield the CPU to the model's thread, and hold a bounded
number of scans in flight (issue 7), and a bounded number of bytes (huge masters)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from colorize.engine import Colorizer
from colorize.inflight import WRITE_PEAK_FACTOR, InFlight, default_memory_budget, memory_budget, write_peak_factor
from colorize.manifest import new_run_id
from colorize.modelfile import load_model
from colorize.plan import RunOptions, WorkItem
from colorize.process import IO_NICENESS, ShardProcessor, io_workers, read_ahead
from colorize.storage.local import LocalStorage
from tests.helpers import encode, gray_image, write


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class WatchedStorage(LocalStorage):
    """A local folder that notes each calling thread's niceness as it reads and writes, and how many
    scans are between their read and their write (optionally writing slowly, as a busy disk does)."""

    def __init__(self, uri: str, write_delay: float = 0.0):
        super().__init__(uri)
        self.seen: list[tuple[str, int]] = []
        self.write_delay = write_delay
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def _count(self, step: int) -> None:
        with self._lock:
            self.in_flight += step
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def read_bytes(self, key: str) -> bytes:
        self.seen.append(("read", _niceness()))
        self._count(+1)
        return super().read_bytes(key)

    def write_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.seen.append(("write", _niceness()))
        time.sleep(self.write_delay)
        super().write_bytes(key, data, content_type)
        self._count(-1)


def _run(
    tmp_path: Path, model: Path, n: int, batch_size: int, write_delay: float = 0.0, memory_budget: int | None = None
) -> WatchedStorage:
    """Colorize n small (60x80) scans with one storage watching both sides; return it."""
    for i in range(n):
        write(tmp_path / "src" / f"s{i:02d}.png", encode(gray_image(60, 80, seed=i), "PNG"))
    storage = WatchedStorage(str(tmp_path), write_delay)
    loaded = load_model(str(model))
    opts = RunOptions(run_id=new_run_id(), source=storage.uri, dest=storage.uri, model=str(model),
                      model_id=loaded.model_id, batch_size=batch_size, memory_budget=memory_budget)  # fmt: skip
    items = [WorkItem(o.key, o.size, o.mtime, None, f"out/{o.key}", "PNG") for o in storage.list("src/")]
    rows = ShardProcessor(opts, Colorizer(loaded, device="cpu"), storage, storage).run(items)
    assert [r.status for r in rows] == ["colorized"] * n
    return storage


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux only")
def test_readers_and_writers_run_below_the_models_thread(tmp_path: Path, tiny_model: Path):
    before = _niceness()
    storage = _run(tmp_path, tiny_model, 6, batch_size=2)
    expected = min(19, before + IO_NICENESS)
    assert Counter(storage.seen) == {("read", expected): 6, ("write", expected): 6}
    assert _niceness() == before  # the calling (model's) thread keeps its priority


@pytest.mark.parametrize("batch_size", [1, 8])
def test_scans_in_flight_follow_the_batch_size(tmp_path: Path, tiny_model: Path, batch_size: int):
    """Memory for huge scans: a smaller batch holds fewer full-resolution scans, even when writes lag."""
    window = read_ahead(batch_size, io_workers())
    storage = _run(tmp_path, tiny_model, 40, batch_size, write_delay=0.02)
    # Read ahead (window) + the batch at the model + writes waiting behind it (window + a batch).
    assert storage.most_in_flight <= 2 * window + 2 * batch_size
    assert storage.most_in_flight >= min(40, window)  # and it does read ahead while the writes lag


GRAY = 60 * 80  # bytes of one of _run's scans at full resolution


def test_a_memory_budget_bounds_the_scans_in_flight(tmp_path: Path, tiny_model: Path):
    """Huge masters: the bytes held, not only the number of scans, stay within the budget."""
    # Room for 12 scans once the writers' few are charged at their peak.
    budget = (io_workers() * (WRITE_PEAK_FACTOR - 1) + 12) * GRAY
    storage = _run(tmp_path, tiny_model, 40, batch_size=8, write_delay=0.02, memory_budget=budget)
    assert storage.most_in_flight <= 12 + 1  # one read always goes on, even over the budget
    assert storage.most_in_flight >= 2  # reading still overlaps writing
    # Without the budget the same run holds more (the window of scans: test above).
    assert _run(tmp_path / "free", tiny_model, 40, batch_size=8, write_delay=0.02).most_in_flight > 12 + 1


def test_a_scan_larger_than_the_budget_is_still_done_alone(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="colorize.process"):
        storage = _run(tmp_path, tiny_model, 10, batch_size=8, memory_budget=GRAY // 2 + 1)
        assert storage.most_in_flight == 1
        _run(tmp_path / "again", tiny_model, 10, batch_size=8, memory_budget=GRAY // 2 + 1)  # a second shard
    said = [r.getMessage() for r in caplog.records if "memory budget" in r.getMessage()]
    assert len(said) == 1 and "--memory-gb" in said[0]  # the operator learns why it is slow, once


def test_the_account_charges_the_scans_that_may_be_written_next_at_their_peak():
    held = InFlight(budget=100 * GRAY, workers=2)
    assert held.may_read(0) and not held.may_read(1)  # one read at a time until a size is known
    held.read(0, GRAY)
    held.read(1, GRAY)
    # 2 scans held, both charged at their peak (2 writers); each read in flight as one more held.
    room = 100 - 2 * WRITE_PEAK_FACTOR
    assert held.may_read(room - 1) and not held.may_read(room)
    held.to_write(0)
    held.to_write(1)
    assert held.may_read(room - 1) and not held.may_read(room) and held.writing == 2
    held.read(2, 80 * GRAY)  # a huge master
    assert held.over() and not held.may_read(0)
    assert held.written(0) == GRAY and held.written(1) == GRAY
    assert held.over()  # alone over the budget: the shard lets it through alone (tests above)
    assert held.written(2) == 80 * GRAY
    assert not held.over() and held.writing == 0


def test_a_format_whose_encoder_holds_more_is_charged_its_own_peak():
    jp2 = write_peak_factor("JPEG2000")
    assert jp2 > WRITE_PEAK_FACTOR == write_peak_factor("JPEG") == write_peak_factor("TIFF")
    held = InFlight(budget=100 * GRAY, workers=1)
    held.read(0, GRAY)
    held.read(1, GRAY, jp2)  # the one writer's next scan may be this one: charged at the higher peak
    assert held.may_read(100 - jp2 - 2) and not held.may_read(100 - jp2 - 1)


def test_the_default_budget_is_shared_by_a_hosts_processes():
    assert memory_budget(0.5) == 2**29  # as asked, per process
    assert memory_budget(None) is None  # each process takes its own machine's share
    assert memory_budget(None, local_processes=4) == default_memory_budget(4) == default_memory_budget() // 4
    assert default_memory_budget() > 0


def test_outputs_opencv_writes_keep_the_scans_resolution_depth_and_provenance(tmp_path: Path, tiny_model: Path):
    """TIFFs and 16-bit PNGs are OpenCV's to encode (it takes no resolution for PNGs): nothing is lost."""
    import cv2
    import numpy as np
    from PIL import Image

    from colorize.provenance_read import read_provenance
    from colorize.storage import open_storage

    src = tmp_path / "src"
    write(src / "p16.png", encode(gray_image(60, 80, seed=1, dtype=np.uint16), "PNG", dpi=(600, 600)))
    write(src / "t8.tif", encode(gray_image(60, 80, seed=2), "TIFF", dpi=(400, 400)))
    loaded = load_model(str(tiny_model))
    opts = RunOptions(run_id=new_run_id(), source=str(src), dest=str(tmp_path / "out"), model=str(tiny_model),
                      model_id=loaded.model_id)  # fmt: skip
    source, dest = open_storage(opts.source), open_storage(opts.dest)
    items = [WorkItem(o.key, o.size, o.mtime, None, o.key, "PNG" if o.key.endswith(".png") else "TIFF")
             for o in source.list()]  # fmt: skip
    rows = ShardProcessor(opts, Colorizer(loaded, device="cpu"), source, dest).run(items)
    assert [(r.status, r.bit_depth, r.reason) for r in rows] == [("colorized", 16, ""), ("colorized", 8, "")]
    for row, (name, dpi, dtype) in zip(rows, (("p16.png", 600, np.uint16), ("t8.tif", 400, np.uint8)), strict=True):
        data = (tmp_path / "out" / name).read_bytes()
        assert tuple(round(v) for v in Image.open(tmp_path / "out" / name).info["dpi"]) == (dpi, dpi)
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).dtype == dtype
        assert read_provenance(data)["source_sha256"] == row.source_sha256


def test_a_scan_that_grew_since_it_was_listed_is_left_for_the_next_run(tmp_path: Path, tiny_model: Path):
    """A scanner still writing into the folder the run listed: the file read is not the file listed."""
    from colorize.storage import open_storage

    src = tmp_path / "src"
    write(src / "done.png", encode(gray_image(60, 80, seed=1), "PNG"))
    whole = encode(gray_image(60, 80, seed=2), "PNG")
    write(src / "arriving.png", whole[: len(whole) // 2])
    loaded = load_model(str(tiny_model))
    opts = RunOptions(run_id=new_run_id(), source=str(src), dest=str(tmp_path / "out"), model=str(tiny_model),
                      model_id=loaded.model_id)  # fmt: skip
    source, dest = open_storage(opts.source), open_storage(opts.dest)
    items = [WorkItem(o.key, o.size, o.mtime, None, o.key, "PNG") for o in source.list()]
    (src / "arriving.png").write_bytes(whole)  # the rest arrives after the listing
    rows = {
        r.source_uri.rpartition("/")[2]: r
        for r in ShardProcessor(opts, Colorizer(loaded, "cpu"), source, dest).run(items)
    }
    assert rows["done.png"].status == "colorized"
    assert rows["arriving.png"].status == "failed" and rows["arriving.png"].reason == (
        f"source file changed between listing ({len(whole) // 2} bytes) and reading ({len(whole)} bytes): "
        "still being written, or replaced; the next run takes it as it is then"
    )
    assert not (tmp_path / "out" / "arriving.png").exists()
