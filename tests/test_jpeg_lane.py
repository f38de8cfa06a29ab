"""The JPEG lane: the GPU's way through a shard must give what the CPU's way gives.

Everything here runs the lane's real code on the CPU (torchvision decodes and encodes JPEGs there
too); ``tests/test_gpu.py`` runs it on a GPU.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image

from colorize import process, tensor_color
from colorize.color import despeckle_ab, gray_to_lightness, luma, merge_chroma
from colorize.engine import Colorizer, model_input
from colorize.icc import SRGB_PROFILE
from colorize.imaging import DEFAULT_MAX_PIXELS, decode_scan, encode_image, set_jpeg_dpi
from colorize.jpeg_lane import JpegLane, read_header
from colorize.manifest import new_run_id
from colorize.modelfile import PACKAGED_DIR, load_model
from colorize.plan import RunOptions, WorkItem
from colorize.process import ShardProcessor
from colorize.provenance_read import read_provenance
from colorize.storage import open_storage
from tests.helpers import colour_image, encode, gray_image, make_model, write

CPU = torch.device("cpu")


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


def test_tensor_merge_matches_opencv_merge():
    gray = gray_image(300, 410, seed=3)
    rng = np.random.default_rng(0)
    ab = np.clip(rng.normal(0, 25, (256, 256, 2)), -100, 100).astype(np.float32)
    for radius in (0, 8):  # bicubic, and along the scan's edges
        cpu = merge_chroma(gray, ab, guide_radius=radius)
        tensor = tensor_color.merge_chroma(torch.from_numpy(gray)[None], _chw(ab)[None], guide_radius=radius)
        tensor = tensor[0].permute(1, 2, 0).numpy()
        assert tensor.shape == cpu.shape and tensor.dtype == np.uint8
        diff = np.abs(tensor.astype(int) - cpu)
        # The guide fits chroma to the gray at 256, whose area averages differ by a code here and there.
        assert diff.max() <= (1 if radius == 0 else 3) and (diff > 1).mean() < 0.002
    # The lane hands the merge the model's input it already made: the same colour, the grays not shrunk twice.
    full = torch.from_numpy(gray)
    small = JpegLane(CPU).model_input([full], 256)
    made_here = tensor_color.merge_chroma(full[None], _chw(ab)[None])
    assert torch.equal(tensor_color.merge_chroma(full[None], _chw(ab)[None], small), made_here)


def test_tensor_colour_helpers_match_the_cpu_ones():
    levels = np.linspace(0, 1, 1001, dtype=np.float32)
    assert (
        np.abs(tensor_color.gray_to_lightness(torch.from_numpy(levels)).numpy() - gray_to_lightness(levels)).max()
        < 0.25
    )
    rgb = colour_image(60, 70)
    assert np.abs(tensor_color.luma(_chw(rgb)[None])[0].numpy().astype(int) - luma(rgb)).max() <= 1
    ab = np.random.default_rng(1).normal(0, 40, (2, 64, 64, 2)).astype(np.float32)
    for k in (1, 5, 9):
        ours = tensor_color.despeckle_ab(torch.from_numpy(ab).permute(0, 3, 1, 2), k, chunk=1)
        assert np.array_equal(ours.permute(0, 2, 3, 1).numpy(), despeckle_ab(ab, k))
    for h, w in ((1200, 1600), (240, 320), (900, 300)):  # shrinking, enlarging, both
        g = gray_image(h, w, seed=2)
        ours = tensor_color.resize_area(torch.from_numpy(g)[None, None].float() / 255, 256, 256)[0, 0].numpy()
        assert np.abs(ours - model_input(g)).mean() < 0.01


def test_despeckle_removes_isolated_specks_and_keeps_edges():
    ab = np.zeros((64, 64, 2), np.float32)
    ab[:, 32:] = 40.0  # a colour edge
    ab[10, 10] = (-60.0, 60.0)  # one speck
    out = despeckle_ab(ab, 9)
    assert np.array_equal(out[10, 10], [0.0, 0.0])
    assert np.array_equal(out[:, 20:28], ab[:, 20:28]) and np.array_equal(out[:, 36:44], ab[:, 36:44])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_the_cpu_decoder(orientation):
    img = Image.fromarray(gray_image(60, 90, seed=orientation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, exif=exif, dpi=(300, 600))
    data = buf.getvalue()
    header = read_header(data, DEFAULT_MAX_PIXELS)
    assert header is not None and header.orientation == orientation
    assert header.dpi == decode_scan(data).dpi  # a quarter turn swaps them, on both paths
    (decoded,) = JpegLane(CPU).decode([data], [header])
    assert decoded is not None
    expected = decode_scan(data).gray
    assert (header.height, header.width) == expected.shape
    assert np.array_equal(decoded.gray.numpy(), expected)


def test_header_sends_everything_else_the_cpu_way():
    gray = gray_image(50, 60)
    assert read_header(encode(gray, "JPEG"), DEFAULT_MAX_PIXELS) is not None
    assert read_header(encode(gray, "JPEG"), 50 * 60 - 1) is None  # over the limit: the CPU path explains
    assert read_header(encode(gray, "PNG"), DEFAULT_MAX_PIXELS) is None
    whole = encode(gray_image(200, 300), "JPEG")
    assert read_header(whole + b"\x00" * 16, DEFAULT_MAX_PIXELS) is not None  # padded after its end: fine
    assert read_header(whole[:2500], DEFAULT_MAX_PIXELS) is None  # cut short: the GPU decoder would not say
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(cmyk, "JPEG")
    assert read_header(cmyk.getvalue(), DEFAULT_MAX_PIXELS) is None
    assert read_header(b"not an image at all", DEFAULT_MAX_PIXELS) is None


def test_jpeg_dpi_is_recorded_with_or_without_a_jfif_header():
    data = encode(gray_image(20, 30), "JPEG")
    assert Image.open(io.BytesIO(set_jpeg_dpi(data, (600.0, 300.0)))).info["dpi"] == (600, 300)
    no_app0 = data[:2] + data[2 + 2 + int.from_bytes(data[4:6], "big") :]  # JFIF segment removed
    assert no_app0[2:4] != b"\xff\xe0"
    out = set_jpeg_dpi(no_app0, (400.0, 400.0))
    assert Image.open(io.BytesIO(out)).info["dpi"] == (400, 400)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out))), np.asarray(Image.open(io.BytesIO(data))))
    assert "dpi" not in Image.open(io.BytesIO(set_jpeg_dpi(data, None))).info


def _shard(tmp_path: Path, model: Path, lane: bool, adopt: bool = False) -> tuple[list, Path]:
    src = tmp_path / "src"
    dest = tmp_path / ("lane" if lane else "cpu")
    loaded = load_model(str(model))
    opts = RunOptions(run_id=new_run_id(), source=str(src), dest=str(dest), model=str(model),
                      model_id=loaded.model_id, batch_size=3)  # fmt: skip
    source, target = open_storage(opts.source), open_storage(opts.dest)
    items = [WorkItem(o.key, o.size, o.mtime, None, o.key, "TIFF" if o.key.endswith(".tif") else "JPEG",
                      adopt=adopt) for o in source.list()]  # fmt: skip
    processor = ShardProcessor(opts, Colorizer(loaded, device="cpu"), source, target)
    assert processor.lane is None  # on a CPU the lane is off; here it is switched on by hand
    if lane:
        processor.lane = JpegLane(CPU)
    return processor.run(items), dest


def test_the_host_encodes_the_lanes_images_as_the_cpu_path_does():
    rgb = colour_image(120, 170)
    on_device = _chw(rgb)
    assert JpegLane(CPU).encode_on_host(on_device, (300.0, 300.0), None) == encode_image(rgb, "JPEG", (300.0, 300.0))
    nvjpeg_way = Image.open(io.BytesIO(JpegLane(CPU).encode(on_device, (300.0, 300.0))))
    assert nvjpeg_way.info["dpi"] == (300, 300) and nvjpeg_way.size == (170, 120)


def test_what_nvjpeg_cannot_encode_the_host_encodes(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "HOST_ENCODES", False)  # nvJPEG is to take every image

    def out_of_gpu_memory(self, rgb, dpi):  # the fault a crowded GPU gives
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(JpegLane, "encode", out_of_gpu_memory)
    make_model(tmp_path / "m", width=8)
    for i in range(4):
        write(tmp_path / "src" / f"g{i}.jpg", encode(gray_image(90, 120 + i, seed=i), "JPEG", dpi=(300, 300)))
    rows, out = _shard(tmp_path, tmp_path / "m", lane=True)
    assert [r.status for r in rows] == ["colorized"] * 4
    for row in rows:
        made = Image.open(out / row.output_uri.rsplit("/", 1)[1])
        assert made.size == (row.width, row.height) and made.info["dpi"] == (300, 300)


@pytest.mark.parametrize("host_encodes", [True, False], ids=["nvjpeg-and-host", "nvjpeg-alone"])
def test_shard_through_the_lane_gives_the_cpu_paths_results(tmp_path, monkeypatch, host_encodes):
    monkeypatch.setattr(process, "HOST_ENCODES", host_encodes)
    model = tmp_path / "starter"
    shutil.copytree(PACKAGED_DIR, model)  # a trained model: its colours are what users compare
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"gray{i}.jpg", encode(gray_image(240 + 7 * i, 330, seed=i), "JPEG", quality=90, dpi=(300, 300)))
    write(src / "rgb-gray.jpg", encode(np.repeat(gray_image(200, 260, seed=9)[..., None], 3, axis=2), "JPEG"))
    write(src / "progressive.jpg", encode(gray_image(210, 250, seed=5), "JPEG", progressive=True))
    gamma18 = imagecodecs.cms_profile("gray", gamma=1.8)  # its tones converted on the device, by a table
    write(src / "gamma18.jpg", encode(gray_image(190, 230, seed=6), "JPEG", icc_profile=gamma18))
    write(src / "colour.jpg", encode(colour_image(200, 300), "JPEG", quality=90))
    write(src / "cut.jpg", encode(gray_image(200, 300), "JPEG")[:2500])
    write(src / "deep.tif", encode(gray_image(120, 160, dtype=np.uint16), "TIFF"))

    cpu_rows, cpu_out = _shard(tmp_path, model, lane=False)
    lane_rows, lane_out = _shard(tmp_path, model, lane=True)

    def fields(r):
        return (r.source_uri, r.status, r.width, r.height, r.mode, r.bit_depth, r.source_sha256, r.provenance)

    assert [fields(r) for r in lane_rows] == [fields(r) for r in cpu_rows]
    statuses = {r.source_uri.rsplit("/", 1)[1]: r.status for r in lane_rows}
    assert statuses["colour.jpg"] == "skipped_color"
    assert statuses["cut.jpg"] == "failed"
    assert [r.reason for r in lane_rows if r.status == "failed"] == [r.reason for r in cpu_rows if r.status == "failed"]
    done = [r for r in lane_rows if r.status == "colorized"]
    assert len(done) == 8
    for row in done:
        name = row.output_uri.rsplit("/", 1)[1]
        ours, theirs = Image.open(lane_out / name), Image.open(cpu_out / name)
        assert ours.size == theirs.size and ours.mode == theirs.mode
        assert ours.info.get("dpi") == theirs.info.get("dpi")
        assert ours.info["icc_profile"] == theirs.info["icc_profile"] == SRGB_PROFILE  # nvJPEG's outputs too
        diff = np.abs(np.asarray(ours).astype(int) - np.asarray(theirs))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, name  # JPEG re-encoding noise is ~1 code
        info = read_provenance((lane_out / name).read_bytes())
        assert info["source_sha256"] == row.source_sha256 and info["model_id"] == row.model_id

    # Outputs no record names (a run stopped before recording them): the lane keeps them, as the CPU way does.
    made = {p.name: p.read_bytes() for p in lane_out.iterdir() if p.is_file()}
    again, _ = _shard(tmp_path, model, lane=True, adopt=True)
    kept = [r for r in again if r.status == "skipped_done"]
    assert len(kept) == 8 and all("found whole, made by run" in r.reason for r in kept)
    assert [(r.width, r.height, r.output_sha256) for r in kept] == [(r.width, r.height, r.output_sha256) for r in done]
    assert {p.name: p.read_bytes() for p in lane_out.iterdir() if p.is_file()} == made
