"""Memory of planning a huge run: listing, ledger check and sharding, streamed.

    python bench/plan_memory.py [--keys 200000] [--workdir DIR]

Makes KEYS empty scan files in folders of 1000, and a ledger at the destination that knows every
one of them (as the nightly run over a finished collection sees it). Then plans a run over them, in
a fresh process (what making the collection left in the allocator would blur the figures), and
prints the resident memory before, at its peak, and the growth, with the number of planned items.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colorize.manifest import LEDGER_KEY, Ledger, ManifestRow, format_mtime, to_frame, write_csv  # noqa: E402
from colorize.plan import RunOptions, Shard, plan  # noqa: E402
from colorize.storage import open_storage  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_collection(root: Path, keys: int) -> None:
    """``keys`` empty .jpg files under root/src, and a ledger under root/dest naming them all."""
    src = root / "src"
    rows = []
    for i in range(keys):
        folder = src / f"box-{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"scan-{i:07d}.jpg"
        path.touch()
        rows.append((str(path), 0, format_mtime(path.stat().st_mtime)))
    frame = to_frame(
        ManifestRow(run_id="earlier", source_uri=uri, source_size=size, source_mtime=mtime, status="skipped_color",
                    worker="bench", finished_at="-")
        for uri, size, mtime in rows
    )  # fmt: skip
    write_csv(open_storage(str(root / "dest")), LEDGER_KEY, frame)


def measure(root: Path) -> dict[str, float]:
    """Plan a run over ``root/src`` into ``root/dest``; memory in MB and the counts planned."""
    source, dest = open_storage(str(root / "src")), open_storage(str(root / "dest"))
    opts = RunOptions(run_id="bench", source=source.uri, dest=dest.uri, model="m", model_id="m@0")
    before = rss_mb()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    ledger = Ledger.load(dest)
    after_ledger = rss_mb()
    work = skipped = 0
    for unit in plan(opts, source, dest, ledger):
        if isinstance(unit, Shard):
            work += len(unit.items)
        else:
            skipped += len(unit.rows)
    stop.set()
    sampler.join()
    return {
        "rss_before_mb": round(before, 1), "rss_after_ledger_mb": round(after_ledger, 1),
        "rss_peak_mb": round(max(peak[0], rss_mb()), 1), "growth_mb": round(max(peak[0], rss_mb()) - before, 1),
        "planned_work": work, "planned_skips": skipped, "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: plan only, in a child
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="colorize-plan-"))
    make_collection(root, args.keys)
    child = [sys.executable, __file__, "--measure", str(root)]
    out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
