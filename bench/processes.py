"""Our pipeline (c) run by K processes sharing one device: does it scale past one process?

    python bench/processes.py [--n N] [--device cpu|cuda] [--processes 1,2,4] [--json PATH]

One process's pipeline is bound by work that holds Python's GIL (metadata, provenance, Python's
own per-file bookkeeping: ``bench/lane_stages.py`` measures it), not by the GPU. A deployment can
run several processes per GPU (Dask workers, ``--dask-local K``); this measures what that gives.
Each process takes an equal share of the same kind of folder as ``bench/throughput.py``'s, warms up
(model, codecs), waits for the others at a barrier, then colorizes its share. Images/s is N over the
time from the barrier to the last process's end, and is compared with K = 1 in the same run.

``--variants`` measures each K again with the JPEG lane as it was before a change, to measure the
change in the same run: ``current`` is today's lane, ``nvjpeg-alone`` the lane with nvJPEG encoding
every image (``process.HOST_ENCODES`` off: the host's idle writers do not encode).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import bench_model, build_folder, pipeline  # noqa: E402  (the same folder and pipeline)

# process.HOST_ENCODES in each variant.
VARIANTS = {"current": True, "nvjpeg-alone": False}


def _worker(
    work: str, part: str, device: str, batch: int, variant: str, barrier: mp.synchronize.Barrier, out: mp.Queue
) -> None:
    from colorize import process
    from colorize.engine import Colorizer
    from colorize.modelfile import load_model

    process.HOST_ENCODES = VARIANTS[variant]

    colorizer = Colorizer(load_model(str(Path(work) / "model")), device=device)
    root = Path(part)
    pipeline(root / "warm-up" / "scans", root / "warm-up" / "out", colorizer, batch, 256)
    barrier.wait()
    start = time.perf_counter()
    pipeline(root / "scans", root / "out", colorizer, batch, 256)
    out.put((start, time.perf_counter()))


def run(work: Path, k: int, n: int, device: str, batch: int, tiff_every: int, variant: str = "current") -> float:
    """Images/s of K processes colorizing N scans between them."""
    parts = []
    for j in range(k):
        part = work / f"{variant}-k{k}" / f"part-{j}"
        build_folder(part, n // k, tiff_every)
        build_folder(part / "warm-up", 2 * batch, tiff_every)
        parts.append(part)
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(work), str(p), device, batch, variant, barrier, out)) for p in parts]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a worker process failed (exit code {p.exitcode})")
    return (n // k) * k / (max(t[1] for t in times) - min(t[0] for t in times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", default="1,2,4", help="process counts to measure, the first is the baseline")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--tiff-every", type=int, default=0, help="one scan in this many a 16-bit TIFF (0: none)")
    parser.add_argument("--variants", default="current", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="colorize-bench-procs-"))
    bench_model(args.width, None, work)
    counts = [int(k) for k in args.processes.split(",")]
    variants = args.variants.split(",")
    rates: dict[str, float] = {}
    for k in counts:  # variants side by side for each K: the machine drifts less between them
        for variant in variants:
            rate = run(work, k, args.n, args.device, args.batch_size, args.tiff_every, variant)
            rates[f"processes_{k}" + ("" if variant == "current" else f"_{variant}")] = round(rate, 2)
            print(f"{k:2d} processes  {variant:9s} {rate:8.1f} img/s", flush=True)
    base = rates[next(iter(rates))]
    for name, rate in rates.items():
        print(f"{name:28s} {rate:8.1f} img/s  x{rate / base:.2f}")
    if args.json:
        summary = {"n": args.n, "device": args.device, "batch_size": args.batch_size, "width": args.width}
        args.json.write_text(json.dumps(summary | rates, indent=2))


if __name__ == "__main__":
    main()
