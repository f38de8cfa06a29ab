"""A shard's threads: readers and writers yield the CPU to the model's thread (issue 7)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from colorize.engine import Colorizer
from colorize.manifest import new_run_id
from colorize.modelfile import load_model
from colorize.plan import RunOptions, WorkItem
from colorize.process import IO_NICENESS, ShardProcessor
from colorize.storage.local import LocalStorage
from tests.helpers import encode, gray_image, write


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class WatchedStorage(LocalStorage):
    """A local folder that notes each calling thread's niceness as it reads and writes."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.seen: list[tuple[str, int]] = []

    def read_bytes(self, key: str) -> bytes:
        self.seen.append(("read", _niceness()))
        return super().read_bytes(key)

    def write_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.seen.append(("write", _niceness()))
        super().write_bytes(key, data, content_type)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux only")
def test_readers_and_writers_run_below_the_models_thread(tmp_path: Path, tiny_model: Path):
    for i in range(6):
        write(tmp_path / "src" / f"s{i}.png", encode(gray_image(60, 80, seed=i), "PNG"))
    source, dest = WatchedStorage(str(tmp_path / "src")), WatchedStorage(str(tmp_path / "out"))
    model = load_model(str(tiny_model))
    opts = RunOptions(run_id=new_run_id(), source=source.uri, dest=dest.uri, model=str(tiny_model),
                      model_id=model.model_id, batch_size=2)  # fmt: skip
    items = [WorkItem(o.key, o.size, o.mtime, None, o.key, "PNG") for o in source.list()]
    before = _niceness()

    rows = ShardProcessor(opts, Colorizer(model, device="cpu"), source, dest).run(items)

    assert [r.status for r in rows] == ["colorized"] * 6
    expected = min(19, before + IO_NICENESS)
    assert source.seen == [("read", expected)] * 6 and dest.seen == [("write", expected)] * 6
    assert _niceness() == before  # the calling (model's) thread keeps its priority
