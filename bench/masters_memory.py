"""Memory and speed of colorizing huge masters under a memory budget, against no budget.

    python bench/masters_memory.py [--n 24] [--side 8000] [--budgets-gb 4,2,1] [--format jpeg|jp2] [--json PATH]

Makes N gray 8-bit masters of SIDE x 3/4 SIDE (48 MP at the default), JPEG at quality 90 or
lossless JPEG 2000 (written back in their own format), then runs the shard
pipeline over them (batch 8, random-weight width-24 model on the CPU), once per budget, each in a
fresh process: first with no effective budget (the window of scans alone bounds memory), then with
each budget. Printed per run: the peak resident memory's growth over the process's memory before
the run, its ratio to the budget and to the unbudgeted run's, and scans/s as a ratio to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import PeakRSS, bench_model, gray_scan, pipeline, rss_mb  # noqa: E402
from colorize.engine import Colorizer  # noqa: E402

UNBOUNDED = 1 << 40  # 1 TiB: the budget never binds


FORMATS = {"jpeg": (".jpg", {"format": "JPEG", "quality": 90}), "jp2": (".jp2", {"format": "JPEG2000"})}


def build_masters(root: Path, n: int, side: int, fmt: str = "jpeg") -> None:
    """N masters under root/scans, copies of four distinct images (the pipeline hashes, not dedups)."""
    ext, options = FORMATS[fmt]
    pool = root / "pool"
    pool.mkdir(parents=True)
    sources = []
    for i in range(4):
        path = pool / f"m{i}{ext}"
        Image.fromarray(gray_scan((side, side * 3 // 4), i, 8)).save(path, **options)
        sources.append(path)
    (root / "scans").mkdir()
    for i in range(n):
        shutil.copyfile(sources[i % len(sources)], root / "scans" / f"master-{i:03d}{ext}")


def one_run(work: Path, budget: int) -> dict[str, float]:
    """In this process: colorize the masters once under ``budget``; peak RSS growth and scans/s."""
    colorizer = Colorizer(bench_model(24, None, work / f"model-{budget}"), device="cpu", backend="torch")
    n = len(list((work / "scans").iterdir()))
    dest = work / f"out-{budget}"
    colorizer.predict_ab(np.zeros((8, colorizer.image_size, colorizer.image_size), np.float32))  # model's own memory
    before = rss_mb()
    with PeakRSS() as rss:
        start = time.perf_counter()
        pipeline(work / "scans", dest, colorizer, batch=8, shard_size=n, memory_budget=budget)
        wall = time.perf_counter() - start
    shutil.rmtree(dest)
    return {"budget_mb": budget / 2**20, "growth_mb": rss.peak - before, "scans_per_s": n / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--side", type=int, default=8000, help="long side of each master (4:3)")
    ap.add_argument("--budgets-gb", default="4,2,1")
    ap.add_argument("--format", choices=sorted(FORMATS), default="jpeg", help="the masters' format")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, help=argparse.SUPPRESS)  # internal: one run, in a child
    args = ap.parse_args()
    if args.budget is not None:
        print(json.dumps(one_run(args.workdir, args.budget)))
        return
    with tempfile.TemporaryDirectory(prefix="masters-") as tmp:
        work = Path(tmp)
        build_masters(work, args.n, args.side, args.format)
        mp = args.side * (args.side * 3 // 4) / 1e6
        kind = FORMATS[args.format][1]["format"]
        print(f"{args.n} gray {kind} masters of {mp:.0f} MP ({mp:.0f} MB of gray each), batch 8, CPU")
        budgets = [UNBOUNDED] + [int(float(b) * 2**30) for b in args.budgets_gb.split(",")]
        results = []
        for budget in budgets:
            cmd = [sys.executable, __file__, "--workdir", str(work), "--budget", str(budget)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    base = results[0]
    heads = ("budget", "peak growth MB", "of budget", "of unbudgeted", "scans/s", "speed ratio")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (10, 15, 10, 14, 8, 12), strict=True)))
    for r in results:
        name = "none" if r["budget_mb"] >= UNBOUNDED / 2**20 else f"{r['budget_mb'] / 1024:g} GiB"
        of_budget = "" if name == "none" else f"{r['growth_mb'] / r['budget_mb']:.2f}"
        print(
            f"{name:>10} {r['growth_mb']:>15.0f} {of_budget:>10} {r['growth_mb'] / base['growth_mb']:>14.2f} "
            f"{r['scans_per_s']:>8.2f} {r['scans_per_s'] / base['scans_per_s']:>12.2f}"
        )
    if args.json:
        summary = {"n": args.n, "megapixels": mp, "format": args.format, "runs": results}
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
