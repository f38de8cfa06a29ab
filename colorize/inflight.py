"""How much memory a shard holds for scans between their read and their write, against a budget.

The read-ahead window counts scans, which is right for ordinary scans and wrong for huge masters:
32 scans of 200 MP are tens of GB. The shard's main thread therefore also keeps this account, in
bytes, and reads less far ahead, flushes a partial batch or waits for its writes when it runs over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# A scan's peak while it is merged and encoded, as a multiple of its full-resolution gray: the gray
# itself, the chroma's guided fit upsampled to full size (float32 slopes and offsets of a and b: 16
# bytes a pixel), the RGB output, the encoded bytes, and what the allocator keeps. Measured through
# the pipeline on 48 MP 8-bit JPEG masters done one at a time: 22.9x (bench/RESULTS.md,
# bench/masters_memory.py; 15.5x when the chroma was upsampled alone).
WRITE_PEAK_FACTOR = 23
# Formats whose encoder holds more than that. JPEG 2000: OpenJPEG takes the RGB output as 32-bit
# integers per sample (12 bytes a pixel), and imagecodecs allocates the output's buffer ahead;
# measured the same way on 48 MP lossless .jp2 masters: 30.1x (`bench/masters_memory.py --format jp2`).
WRITE_PEAK_FACTORS = {"JPEG2000": 31}
# The default budget's share of the machine's physical memory (divided among a host's processes).
DEFAULT_MEMORY_SHARE = 0.25
# glibc serves allocations under 32 MB (its largest automatic mmap threshold) from per-thread arenas
# and keeps what is freed there. After a scan this large, the freed memory is handed back.
TRIM_AFTER = 32 << 20


def write_peak_factor(fmt: str) -> int:
    """A scan's peak while it is merged and encoded into ``fmt`` (a Pillow format name), as a
    multiple of its full-resolution gray."""
    return WRITE_PEAK_FACTORS.get(fmt, WRITE_PEAK_FACTOR)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def give_back_memory() -> None:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Measured on 48 MP masters, one at a time: the process grew by 839 MB when glibc was left alone,
    711 MB with a trim after each (bench/RESULTS.md).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def default_memory_budget(processes: int = 1) -> int:
    """Bytes for scans in flight in one process: a quarter of physical memory, shared by ``processes``."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest 8 GB machine
        physical = 8 << 30
    return int(physical * DEFAULT_MEMORY_SHARE / max(1, processes))


def memory_budget(memory_gb: float | None, local_processes: int = 0) -> int | None:
    """A run's budget in bytes per process: as asked, or a local cluster's share of this host's.

    None lets each process take its default share of the memory of the machine it runs on
    (a remote Dask worker's, say).
    """
    if memory_gb is not None:
        return int(memory_gb * 2**30)
    return default_memory_budget(local_processes) if local_processes > 0 else None


class InFlight:
    """The bytes held by scans a shard has read and not yet written (main thread only, no locks).

    Each scan is charged its decoded full-resolution gray (``nbytes``) from the moment it is read
    until its write is collected. Scans being written cost more: up to ``workers`` of them are merged
    and encoded at once, each at its format's :func:`write_peak_factor` times its gray: the
    ``workers`` scans held whose peaks are highest are charged so, whether they are at the writers
    yet or still waiting for a batch (a full batch goes to the writers at once). A read in flight is
    charged as a held scan as large as the largest seen so far, at the highest peak seen: its size
    is known only once decoded.
    """

    def __init__(self, budget: int, workers: int):
        self.budget = budget  # positive: RunOptions checks what a user gives
        self.workers = workers
        self.largest = 0
        self._largest_peak = 0
        self._reading: dict[int, tuple[int, int]] = {}  # read, waiting for (or in) a batch: (held, peak)
        self._writing: dict[int, tuple[int, int]] = {}  # handed to the writers

    def _estimate(self, reads_in_flight: int) -> int:
        scans = [
            *self._reading.values(), *self._writing.values(), *[(self.largest, self._largest_peak)] * reads_in_flight
        ]  # fmt: skip
        # Any scan held may be among the next ones merged, so the highest peaks are charged.
        extra = sorted((peak - held for held, peak in scans), reverse=True)[: self.workers]
        return sum(held for held, _ in scans) + sum(extra)

    def may_read(self, reads_in_flight: int) -> bool:
        """Whether one more read fits, ``reads_in_flight`` being already under way.

        Until one scan has been seen, reads go one at a time: their size is anyone's guess.
        """
        if self.largest == 0:
            return reads_in_flight == 0
        return self._estimate(reads_in_flight + 1) <= self.budget

    def read(self, index: int, nbytes: int, peak_factor: int = WRITE_PEAK_FACTOR) -> None:
        """Scan ``index`` has been read and decoded: ``nbytes`` of it are held from now on, and
        ``peak_factor`` times that while it is written."""
        self._reading[index] = (nbytes, nbytes * peak_factor)
        self.largest = max(self.largest, nbytes)
        self._largest_peak = max(self._largest_peak, nbytes * peak_factor)

    def to_write(self, index: int) -> None:
        """Scan ``index`` went through the model and on to the writers."""
        if index in self._reading:
            self._writing[index] = self._reading.pop(index)

    def written(self, index: int) -> int:
        """Scan ``index`` is written (or failed): it holds nothing any more. Returns what it held."""
        return self._reading.pop(index, (0, 0))[0] + self._writing.pop(index, (0, 0))[0]

    def over(self) -> bool:
        """Whether what is held now exceeds the budget."""
        return self._estimate(0) > self.budget

    @property
    def writing(self) -> int:
        return len(self._writing)
