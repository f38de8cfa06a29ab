"""The CUDA path: batched inference with autocast, pinned memory and non-blocking copies.

Skipped where PyTorch sees no GPU (CI has none); run on a GPU machine with
``python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import shutil

import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image

from colorize import process
from colorize.color import merge_chroma
from colorize.engine import Colorizer, model_input
from colorize.icc import SRGB_PROFILE
from colorize.imaging import decode_scan
from colorize.manifest import new_run_id
from colorize.modelfile import PACKAGED_DIR, load_model
from colorize.plan import RunOptions, WorkItem
from colorize.process import ShardProcessor
from colorize.storage import open_storage
from tests.helpers import colour_image, encode, gray_image, make_model, write

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_cuda_matches_cpu_within_bf16_precision(tmp_path):
    make_model(tmp_path / "m", width=8)
    gray = np.stack([model_input(gray_image(300, 400, seed=i)) for i in range(6)])
    cpu = Colorizer(load_model(str(tmp_path / "m")), device="cpu").predict_ab(gray)
    gpu = Colorizer(load_model(str(tmp_path / "m")), device="cuda").predict_ab(gray)
    assert gpu.shape == cpu.shape == (6, 256, 256, 2)
    assert np.abs(gpu - cpu).mean() < 1.0  # ab units; bf16 autocast
    out = merge_chroma(gray_image(300, 400), gpu[0])
    assert out.shape == (300, 400, 3)


def test_shard_on_cuda_colorizes_every_file(tmp_path):
    make_model(tmp_path / "m", width=8)
    src = tmp_path / "src"
    for i in range(10):
        write(src / f"s{i}.jpg", encode(gray_image(240 + i, 320, seed=i), "JPEG", quality=90))
    write(src / "deep.tif", encode(gray_image(200, 260, dtype=np.uint16), "TIFF"))
    model = load_model(str(tmp_path / "m"))
    opts = RunOptions(run_id=new_run_id(), source=str(src), dest=str(tmp_path / "out"), model=str(tmp_path / "m"),
                      model_id=model.model_id, batch_size=4, device="cuda")  # fmt: skip
    source, dest = open_storage(opts.source), open_storage(opts.dest)
    items = [WorkItem(o.key, o.size, o.mtime, None, o.key, "TIFF" if o.key.endswith(".tif") else "JPEG")
             for o in source.list()]  # fmt: skip
    rows = ShardProcessor(opts, Colorizer(model, device="cuda"), source, dest).run(items)
    assert [r.status for r in rows] == ["colorized"] * len(items), [r.reason for r in rows]
    for row in rows:
        scan = decode_scan((tmp_path / "out" / row.output_uri.rsplit("/", 1)[-1]).read_bytes())
        assert (scan.width, scan.height) == (row.width, row.height)


@pytest.mark.parametrize("host_encodes", [True, False], ids=["nvjpeg-and-host", "nvjpeg-alone"])
def test_jpeg_lane_on_cuda_gives_the_cpu_paths_results(tmp_path, monkeypatch, host_encodes):
    monkeypatch.setattr(process, "HOST_ENCODES", host_encodes)
    model = tmp_path / "starter"
    shutil.copytree(PACKAGED_DIR, model)
    src = tmp_path / "src"
    for i in range(6):  # two sizes: the lane merges same-sized scans together
        write(
            src / f"g{i}.jpg", encode(gray_image(600 + 40 * (i % 2), 800, seed=i), "JPEG", quality=90, dpi=(300, 300))
        )
    write(src / "rgb-gray.jpg", encode(np.repeat(gray_image(300, 400, seed=9)[..., None], 3, axis=2), "JPEG"))
    write(src / "progressive.jpg", encode(gray_image(210, 250, seed=5), "JPEG", progressive=True))
    # Colour profiles: a gray one applied on the GPU by a table, an RGB one sent the CPU way.
    gamma18, adobe = imagecodecs.cms_profile("gray", gamma=1.8), imagecodecs.cms_profile("adobergb")
    write(src / "gamma18.jpg", encode(gray_image(260, 300, seed=7), "JPEG", icc_profile=gamma18))
    rgb_gray = np.repeat(gray_image(220, 280, seed=8)[..., None], 3, axis=2)
    write(src / "adobe.jpg", encode(rgb_gray, "JPEG", icc_profile=adobe))
    write(src / "colour.jpg", encode(colour_image(200, 300), "JPEG", quality=90))
    write(src / "cut.jpg", encode(gray_image(200, 300), "JPEG")[:2500])
    write(src / "deep.tif", encode(gray_image(120, 160, dtype=np.uint16), "TIFF"))
    loaded = load_model(str(model))
    results = {}
    for device in ("cpu", "cuda"):
        opts = RunOptions(run_id=new_run_id(), source=str(src), dest=str(tmp_path / device), model=str(model),
                          model_id=loaded.model_id, batch_size=4, device=device)  # fmt: skip
        source, dest = open_storage(opts.source), open_storage(opts.dest)
        items = [WorkItem(o.key, o.size, o.mtime, None, o.key, "TIFF" if o.key.endswith(".tif") else "JPEG")
                 for o in source.list()]  # fmt: skip
        processor = ShardProcessor(opts, Colorizer(loaded, device=device), source, dest)
        assert (processor.lane is not None) == (device == "cuda")  # on by default on a GPU
        results[device] = processor.run(items)

    def fields(r):  # a colour verdict's reason quotes measurements, from a preview made on the GPU
        return (r.source_uri, r.status, r.width, r.height, r.mode, r.reason if r.status == "failed" else "")

    assert [fields(r) for r in results["cuda"]] == [fields(r) for r in results["cpu"]]
    assert sum(r.status == "colorized" for r in results["cuda"]) == 11
    for row in results["cuda"]:
        if row.status != "colorized":
            continue
        name = row.output_uri.rsplit("/", 1)[1]
        ours, theirs = Image.open(tmp_path / "cuda" / name), Image.open(tmp_path / "cpu" / name)
        assert ours.size == theirs.size and ours.info.get("dpi") == theirs.info.get("dpi")
        assert ours.info.get("icc_profile") == theirs.info.get("icc_profile") == SRGB_PROFILE
        diff = np.abs(np.asarray(ours).astype(int) - np.asarray(theirs))
        assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6, name  # bf16 forward, nvJPEG codecs


def test_jpeg_lane_can_be_turned_off(tmp_path):
    make_model(tmp_path / "m", width=8)
    model = load_model(str(tmp_path / "m"))
    opts = RunOptions(run_id=new_run_id(), source=str(tmp_path), dest=str(tmp_path / "out"), model=str(tmp_path / "m"),
                      model_id=model.model_id, device="cuda", gpu_jpeg=False)  # fmt: skip
    source, dest = open_storage(opts.source), open_storage(opts.dest)
    assert ShardProcessor(opts, Colorizer(model, device="cuda"), source, dest).lane is None
