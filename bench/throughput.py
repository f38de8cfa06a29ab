"""Throughput of colorization, four ways, measured side by side in one process with one model.

    python bench/throughput.py [--n N] [--device cpu|cuda] [--json PATH] [--width W] [--batch-size B]

(a) seed_loop   the source notebook's way: one image at a time; PIL open, torchvision transforms,
                forward at batch 1, denormalise, save the 256x256 result
(b) model_only  the forward pass on ready 256x256 batches: the ceiling
(c) pipeline    ours: list, read, decode, luminance, resize, forward, full-resolution merge,
                encode, atomic write, manifest
(d) io_only     (c) with the forward pass skipped: the I/O and colour cost alone
(e) pipeline_cpu_codecs  on CUDA only: (c) with JPEGs decoded, merged and encoded on the CPU
                (``gpu_jpeg=False``), to measure what the GPU's JPEG lane gains

The folder is N gray scans: 1600x1200 JPEGs at quality 90, and one in 20 (``--tiff-every``) a
16-bit 2400x1800 TIFF.
Printed: images/s of each, c/a and c/b, cores, CPU seconds per image of c against b + d, and the
peak RSS of each measurement. ``--json`` writes one object per measurement plus the run's facts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T  # imported before any timing
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colorize.color import denormalize_ab, gray_to_lightness, lab_to_rgb, normalize_l  # noqa: E402
from colorize.engine import Colorizer  # noqa: E402
from colorize.manifest import Ledger, finish_run, new_run_id, write_part  # noqa: E402
from colorize.model import GeneratorConfig, build_generator, init_weights  # noqa: E402
from colorize.modelfile import LoadedModel, load_model, new_card, save_model  # noqa: E402
from colorize.plan import RunOptions, Shard, SkipBatch, plan  # noqa: E402
from colorize.process import ShardProcessor  # noqa: E402
from colorize.storage import open_storage  # noqa: E402

JPEG_SIZE = (1600, 1200)
TIFF_SIZE = (2400, 1800)
TIFF_EVERY = 20


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples this process's resident memory every 20 ms while a measurement runs."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


@dataclass
class Measurement:
    name: str
    n: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float

    @property
    def images_per_s(self) -> float:
        return self.n / self.wall_s

    @property
    def cpu_s_per_image(self) -> float:
        return self.cpu_s / self.n

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "images_per_s": round(self.images_per_s, 3),
            "cpu_s_per_image": round(self.cpu_s_per_image, 4),
            "wall_s": round(self.wall_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "n": self.n,
        }


def measure(name: str, n: int, fn: Callable[[], None], device: torch.device) -> Measurement:
    if device.type == "cuda":
        torch.cuda.synchronize()
    with PeakRSS() as rss:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Measurement(name, n, wall, cpu, rss.peak)


def gray_scan(size: tuple[int, int], seed: int, bits: int) -> np.ndarray:
    """A gray photograph-like image: smooth shapes plus grain (compresses like a real scan)."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.5 + 0.25 * np.sin(x / (40 + seed)) * np.cos(y / (55 + seed))
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(50, 400)
        img += rng.uniform(-0.3, 0.3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    img += rng.normal(0, 0.02, img.shape)
    top = 65535 if bits == 16 else 255
    return np.clip(img * top, 0, top).astype(np.uint16 if bits == 16 else np.uint8)


def gray_jpeg(seed: int, **save: object) -> bytes:
    """One of the folder's 1600x1200 gray JPEGs (quality 90); ``save``: more of Pillow's save options."""
    buf = io.BytesIO()
    Image.fromarray(gray_scan(JPEG_SIZE, seed, 8)).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def build_folder(root: Path, n: int, tiff_every: int = TIFF_EVERY) -> None:
    """N scans under root/scans/batch-XX/, written from a few distinct images (fast to build)."""
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    jpegs = []
    for i in range(8):
        p = pool / f"j{i}.jpg"
        p.write_bytes(gray_jpeg(i))
        jpegs.append(p)
    tiff = pool / "t.tif"
    Image.fromarray(gray_scan(TIFF_SIZE, 99, 16)).save(tiff, compression="tiff_adobe_deflate")
    for i in range(n):
        src = tiff if tiff_every and i % tiff_every == tiff_every - 1 else jpegs[i % len(jpegs)]
        dst = root / "scans" / f"batch-{i // 100:03d}" / f"scan-{i:05d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def seed_loop(files: list[Path], out: Path, colorizer: Colorizer, device: torch.device) -> None:
    """(a) The notebook's loop: PIL, torchvision transforms, batch 1, a 256x256 result per image."""

    to_tensor = T.Compose([T.Resize((256, 256)), T.ToTensor()])
    out.mkdir(parents=True, exist_ok=True)
    generator = colorizer.generator
    with torch.inference_mode():
        for i, path in enumerate(files):
            img = Image.open(path).convert("L")
            gray = to_tensor(img)[0].numpy()  # (256, 256) in [0, 1]
            lightness = gray_to_lightness(gray)
            x = torch.from_numpy(normalize_l(lightness))[None, None].to(device)
            ab = denormalize_ab(generator(x)[0].float().cpu().numpy().transpose(1, 2, 0))
            rgb = lab_to_rgb(np.dstack([lightness, ab]))
            Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(out / f"{i:05d}.png")


def model_only(n: int, batch: int, colorizer: Colorizer) -> None:
    """(b) Forward passes on ready batches, their chroma brought back to the host."""
    gray = np.random.default_rng(0).random((batch, 256, 256), dtype=np.float32)
    done = 0
    while done < n:
        take = min(batch, n - done)
        colorizer.predict_ab(gray[:take])
        done += take


class NoModel(Colorizer):
    """(d): the pipeline with the forward pass skipped; zero chroma of the right shape."""

    def predict_ab(self, gray: np.ndarray) -> np.ndarray:
        return np.zeros((*gray.shape, 2), dtype=np.float32)

    def predict_ab_tensor(self, gray: torch.Tensor) -> torch.Tensor:
        return gray.new_zeros((gray.shape[0], 2, *gray.shape[1:]))


def pipeline(
    src: Path,
    dest: Path,
    colorizer: Colorizer,
    batch: int,
    shard_size: int,
    gpu_jpeg: bool = True,
    memory_budget: int | None = None,
) -> None:
    """(c)/(d): what a colorize run's tasks do, without Prefect around them."""
    source, target = open_storage(str(src)), open_storage(str(dest))
    opts = RunOptions(run_id=new_run_id(), source=source.uri, dest=target.uri, model="bench",
                      model_id=colorizer.model_id, batch_size=batch, shard_size=shard_size,
                      device=str(colorizer.device), gpu_jpeg=gpu_jpeg, memory_budget=memory_budget)  # fmt: skip
    processor = ShardProcessor(opts, colorizer, source, target)
    for unit in plan(opts, source, target, Ledger.load(target)):
        rows = processor.run(unit.items) if isinstance(unit, Shard) else unit.rows
        write_part(target, opts.run_id, unit.name, rows)
        if not isinstance(unit, Shard | SkipBatch):
            raise TypeError(unit)
    run, _ = finish_run(target, opts.run_id)
    bad = run[run["status"] != "colorized"]
    if len(bad):
        raise RuntimeError(f"{len(bad)} files not colorized: {bad['reason'].tolist()[:3]}")


def bench_model(width: int, model_path: str | None, work: Path) -> LoadedModel:
    """The given model, or a random-weight one of this width (saved, so it has a hash like any other)."""
    if model_path:
        return load_model(model_path)
    cfg = GeneratorConfig(width=width)
    torch.manual_seed(0)
    generator = build_generator(cfg)
    init_weights(generator)
    save_model(open_storage(str(work / "model")), generator, new_card(f"bench-w{width}", cfg, "lab"))
    return load_model(str(work / "model"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--width", type=int, default=32, help="generator width (random weights)")
    parser.add_argument("--model", help="use this model instead of random weights")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--seed-n", type=int, help="images for (a), default min(n, 50)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--tiff-every", type=int, default=TIFF_EVERY, help="one scan in this many a 16-bit TIFF (0: none)"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="colorize-bench-"))
    build_folder(work, args.n, args.tiff_every)
    files = sorted((work / "scans").rglob("scan-*"))
    model = bench_model(args.width, args.model, work)
    colorizer = Colorizer(model, device=args.device, backend=args.backend)
    null = NoModel(model, device=args.device, backend="torch")
    cores = len(os.sched_getaffinity(0))
    model_only(args.batch_size, args.batch_size, colorizer)  # warm-up: allocator, kernels, caches
    build_folder(work / "warm-up", 2 * args.batch_size, args.tiff_every)  # ... and codecs (nvJPEG's set-up)
    pipeline(work / "warm-up" / "scans", work / "warm-up" / "out", colorizer, args.batch_size, args.shard_size)

    seed_n = args.seed_n or min(args.n, 50)
    results = [
        measure("seed_loop", seed_n, lambda: seed_loop(files[:seed_n], work / "out-a", colorizer, device), device),
        measure("model_only", args.n, lambda: model_only(args.n, args.batch_size, colorizer), device),
        measure("pipeline", args.n,
                lambda: pipeline(work / "scans", work / "out-c", colorizer, args.batch_size, args.shard_size), device),
        measure("io_only", args.n,
                lambda: pipeline(work / "scans", work / "out-d", null, args.batch_size, args.shard_size), device),
    ]  # fmt: skip
    if device.type == "cuda":  # (c) again with JPEGs decoded, merged and encoded on the CPU: what the JPEG lane gains
        results.append(
            measure(
                "pipeline_cpu_codecs",
                args.n,
                lambda: pipeline(
                    work / "scans", work / "out-e", colorizer, args.batch_size, args.shard_size, gpu_jpeg=False
                ),
                device,
            )
        )
    m = {r.name: r for r in results}
    a, b, c, d = m["seed_loop"], m["model_only"], m["pipeline"], m["io_only"]
    ceiling = cores / (b.cpu_s_per_image + d.cpu_s_per_image)
    summary = {
        "n": args.n,
        "cores": cores,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_name()})",
        "model_width": model.config.width,
        "backend": colorizer.backend,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(max(r.peak_rss_mb for r in results), 1),
        "pipeline_peak_rss_mb": round(c.peak_rss_mb, 1),
        "c_over_a": round(c.images_per_s / a.images_per_s, 3),
        "c_over_b": round(c.images_per_s / b.images_per_s, 3),
        "cpu_c_over_b_plus_d": round(c.cpu_s_per_image / (b.cpu_s_per_image + d.cpu_s_per_image), 3),
        "c_over_core_ceiling": round(c.images_per_s / ceiling, 3),
    }
    if "pipeline_cpu_codecs" in m:
        summary["c_over_cpu_codecs"] = round(c.images_per_s / m["pipeline_cpu_codecs"].images_per_s, 3)
    out = {r.name: r.as_dict() for r in results} | summary
    for r in results:
        print(f"{r.name:11s} {r.images_per_s:8.2f} img/s  {r.cpu_s_per_image:7.4f} CPU-s/img  "
              f"peak RSS {r.peak_rss_mb:7.1f} MB  (n={r.n})")  # fmt: skip
    print(f"cores {cores}, device {summary['device']}, backend {colorizer.backend}, "
          f"width {summary['model_width']}, batch {args.batch_size}")  # fmt: skip
    print(f"c/a = {summary['c_over_a']}   c/b = {summary['c_over_b']}")
    if "pipeline_cpu_codecs" in m:
        print(f"JPEG lane: c / (c with CPU codecs) = {summary['c_over_cpu_codecs']}")
    print(f"CPU-s/img: c {c.cpu_s_per_image:.4f} vs b + d {b.cpu_s_per_image + d.cpu_s_per_image:.4f} "
          f"-> ratio {summary['cpu_c_over_b_plus_d']} (target <= 1.15)")  # fmt: skip
    print(f"c reaches {summary['c_over_core_ceiling']} of the ceiling cores/(cpu_b + cpu_d) = {ceiling:.2f} img/s "
          "(target >= 0.85)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
