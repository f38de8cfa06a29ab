"""The CUDA path: batched inference with autocast, pinned memory and non-blocking copies.

Skipped where PyTorch sees no GPU (CI has none); run on a GPU machine with
``python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from colorize.color import merge_chroma
from colorize.engine import Colorizer, model_input
from colorize.imaging import decode_scan
from colorize.manifest import new_run_id
from colorize.modelfile import load_model
from colorize.plan import RunOptions, WorkItem
from colorize.process import ShardProcessor
from colorize.storage import open_storage
from tests.helpers import encode, gray_image, make_model, write

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
