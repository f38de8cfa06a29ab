"""Images/s of each stage of the JPEG lane alone, to say which one bounds a GPU run.

    python bench/lane_stages.py [--device cuda] [--batch-size B] [--batches N] [--json PATH]

Stages, each timed over the same batches of 1600x1200 gray JPEGs (quality 90) already in memory:

decode        nvJPEG decode of a batch (``JpegLane.decode``)
model_input   squash to 256x256 and the forward pass (``model_input`` + ``predict_ab_tensor``)
merge         the full-resolution merge (``merge``)
encode        nvJPEG encode, one image at a time as the lane's thread does, bytes back on the host
encode_host   the same images encoded by the host's CPU (``encode_on_host``), on one thread; and on
              ``--threads`` threads at once, as the lane's idle writers do
host_side     what the CPU does per scan around them, on one thread: sha256 of source and output,
              header, metadata read and provenance embed (``process.py``'s work besides the codecs);
              and the same on ``--threads`` threads at once (does it scale, or hold the GIL?)
host_*        each part of host_side alone, one thread; ``host_side_catalogued``: host_side for scans
              that carry a scanner's EXIF, which exiv2 reads and carries into the output

On CUDA each GPU stage also gets ``gpu_ms_per_image``: the time its kernels and copies kept the GPU
busy (``torch.profiler``, CUPTI), against the wall time. Processes sharing a GPU take turns on it,
so the sum of the busy times per image bounds what any number of processes can make.

The model is a random-weight generator of ``--width`` (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import gray_jpeg  # noqa: E402  (the same scans)
from colorize.engine import Colorizer  # noqa: E402
from colorize.jpeg_lane import JpegLane, read_header  # noqa: E402
from colorize.model import GeneratorConfig, build_generator, init_weights  # noqa: E402
from colorize.modelfile import LoadedModel, new_card  # noqa: E402
from colorize.provenance import ProvenanceInfo, embed, source_metadata  # noqa: E402


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def gpu_busy_s(fn: Callable[[], object]) -> float:
    """Seconds of GPU time (kernels and copies, nvJPEG's included) that one call of ``fn`` takes."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=16, help="threads for the host side's parallel measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GeneratorConfig(width=args.width)
    generator = build_generator(cfg)
    init_weights(generator)
    model = LoadedModel(generator.eval(), new_card("bench", cfg, "lab"))
    colorizer = Colorizer(model, device=args.device, backend="torch")
    lane = JpegLane(device)
    sources = [gray_jpeg(i) for i in range(4)]
    datas = [sources[i % len(sources)] for i in range(args.batch_size)]
    headers = [read_header(d, 10**9) for d in datas]
    assert all(h is not None for h in headers)
    decoded = lane.decode(datas, headers)  # type: ignore[arg-type]
    assert all(d is not None for d in decoded), "the decoder refused the bench's JPEGs"
    grays = [d.gray for d in decoded]  # type: ignore[union-attr]
    ab = colorizer.predict_ab_tensor(lane.model_input(grays, 256))
    dpis = [None] * len(grays)
    rgbs = lane.merge(grays, ab)
    outputs = [lane.encode(rgb, dpi) for rgb, dpi in zip(rgbs, dpis, strict=True)]
    info = ProvenanceInfo("file:///archive/scan.jpg", "0" * 64, "bench@0", "1" * 64, "run")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Scanner Co.", "FlatBed 9000", "ScanSoft 2.1"  # Make, Model, Software
    catalogued = [gray_jpeg(i, dpi=(600, 600), exif=exif) for i in range(4)]
    parts: dict[str, Callable[[bytes, bytes], object]] = {
        "sha256_source": lambda data, out: hashlib.sha256(data).hexdigest(),
        "header": lambda data, out: read_header(data, 10**9),
        "metadata_read": lambda data, out: source_metadata(data),
        "embed": lambda data, out: embed(out, "JPEG", source_metadata(data), info),
        "sha256_output": lambda data, out: hashlib.sha256(out).hexdigest(),
    }

    files = min(16, args.batch_size)  # the host side's measurements take this many of the batch

    def host_side(scans: list[bytes] = datas) -> None:
        for data, out in zip(scans[:files], outputs[:files], strict=True):
            hashlib.sha256(data).hexdigest()
            read_header(data, 10**9)
            meta = source_metadata(data)
            hashlib.sha256(embed(out, "JPEG", meta, info)).hexdigest()

    def encode_all(encode: Callable[[torch.Tensor, tuple[float, float] | None], bytes]) -> list[bytes]:
        return [encode(rgb, dpi) for rgb, dpi in zip(rgbs, dpis, strict=True)]

    n = args.batch_size
    with ThreadPoolExecutor(args.threads) as pool:
        host_threads = timed(lambda: list(pool.map(lambda _: host_side(), range(args.threads))), device, 1)
        encode_threads = timed(
            lambda: list(pool.map(lambda i: lane.encode_on_host(rgbs[i % n], None, lane.merged()), range(4 * n))),
            device,
            1,
        )
    per_call = {
        "decode": (timed(lambda: lane.decode(datas, headers), device, args.batches), n),  # type: ignore[arg-type]
        "merge": (timed(lambda: lane.merge(grays, ab), device, args.batches), n),
        "encode": (timed(lambda: encode_all(lane.encode), device, args.batches), n),
        "encode_host": (timed(lambda: encode_all(lambda r, d: lane.encode_on_host(r, d, lane.merged())), device, 1), n),
        f"encode_host_{args.threads}_threads": (encode_threads, 4 * n),
        "model_input": (
            timed(lambda: colorizer.predict_ab_tensor(lane.model_input(grays, 256)), device, args.batches),
            n,
        ),
        "host_side": (timed(host_side, device, 1), files),
        f"host_side_{args.threads}_threads": (host_threads, files * args.threads),
        "host_side_catalogued": (timed(lambda: host_side(catalogued * 4), device, 1), files),
    }
    pairs = list(zip(datas[:files], outputs[:files], strict=True))
    for name, part in parts.items():  # each part alone, on the same files
        per_call[f"host_{name}"] = (timed(lambda p=part: [p(d, o) for d, o in pairs], device, 3), files)
    out = {name: {"images_per_s": round(count / s, 1), "ms_per_image": round(1000 * s / count, 3)}
           for name, (s, count) in per_call.items()}  # fmt: skip
    if device.type == "cuda":
        gpu_stages = {
            "decode": lambda: lane.decode(datas, headers),  # type: ignore[arg-type]
            "model_input": lambda: colorizer.predict_ab_tensor(lane.model_input(grays, 256)),
            "merge": lambda: lane.merge(grays, ab),
            "encode": lambda: encode_all(lane.encode),
        }
        for name, fn in gpu_stages.items():
            out[name]["gpu_ms_per_image"] = round(1000 * gpu_busy_s(fn) / n, 3)
        total = sum(out[name]["gpu_ms_per_image"] for name in gpu_stages)
        out["gpu_ms_per_image_all_stages"] = round(total, 3)
        busy = ", ".join(f"{k} {out[k]['gpu_ms_per_image']} ms" for k in gpu_stages)
        print(f"GPU busy per image: {busy}; all {total:.3f} ms -> at most {1000 / total:.0f} img/s on this GPU")
    out["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out["batch_size"], out["width"] = n, args.width
    for name, (s, count) in per_call.items():
        print(f"{name:22s} {count / s:9.1f} img/s  {1000 * s / count:7.3f} ms/img")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
