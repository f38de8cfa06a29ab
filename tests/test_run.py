"""End to end: real files, real Prefect flow runs, the manifest, reruns, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from colorize import model_cache
from colorize.color import COLOUR_METHOD
from colorize.host import HOST
from colorize.imaging import decode_scan
from colorize.lease import LEASE_KEY, DestinationBusyError, DestinationLease
from colorize.manifest import COLUMNS
from colorize.modelfile import load_model
from colorize.provenance_read import recorded_in
from colorize.storage import open_storage
from colorize.storage.local import TEMP_DIR, TEMP_PREFIX
from tests.helpers import encode, gray_image, make_archive, write


@pytest.fixture
def run(prefect_api_url):
    from flows.colorize_archive import colorize_archive

    def go(source: Path, dest: Path, model: Path, **kw):
        return colorize_archive(source=str(source), dest=str(dest), model=str(model), **kw)

    return go


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _manifest(dest: Path, run_id: str | None = None) -> pd.DataFrame:
    path = dest / ("manifest.csv" if run_id is None else f"manifests/{run_id}.csv")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _by_key(frame: pd.DataFrame, source: Path) -> dict[str, pd.Series]:
    return {str(Path(r.source_uri).relative_to(source)): r for r in frame.itertuples()}


def test_first_run_colorizes_every_gray_scan_at_full_resolution(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    expected = make_archive(src)
    before = _tree_hashes(src)
    summary = run(src, dest, tiny_model, shard_size=4, batch_size=3)

    assert _tree_hashes(src) == before  # sources are never modified
    rows = _manifest(dest, summary.run_id)
    assert list(rows.columns[: len(COLUMNS)]) == COLUMNS
    by_key = _by_key(rows, src)
    assert sorted(by_key) == sorted(expected)  # every listed scan exactly once; notes.txt not listed
    assert {k: r.status for k, r in by_key.items()} == expected

    for key, row in by_key.items():
        if row.status != "colorized":
            assert row.output_uri == "" and row.reason
            continue
        out = Path(row.output_uri)
        assert out == dest / key  # mirrors the source's relative path and name
        scan_in, scan_out = decode_scan((src / key).read_bytes()), decode_scan(out.read_bytes())
        assert (scan_out.width, scan_out.height) == (scan_in.width, scan_in.height) == (int(row.width), int(row.height))
        assert scan_out.format == scan_in.format and scan_out.preview is not None
        assert hashlib.sha256(out.read_bytes()).hexdigest() == row.output_sha256
        assert row.source_sha256 == hashlib.sha256((src / key).read_bytes()).hexdigest()
        assert row.model_id.startswith("tiny@") and row.worker

    assert by_key["nested/c16.tif"].bit_depth == "16"
    out16 = np.asarray(Image.open(dest / "nested/c16.tif"))
    import cv2

    assert cv2.imdecode(np.fromfile(dest / "nested/c16.tif", np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert out16.shape[:2] == (80, 100)
    assert by_key["pages.tif"].pages == "2"
    assert by_key["pages.tif"].reason == "page 1 of 2 colorized; the other pages are not in the output"
    assert by_key["a.jpg"].reason == ""  # a whole scan colorized needs no note
    assert by_key["rotated.jpg"].width == "120" and by_key["rotated.jpg"].height == "160"
    # JPEG 2000 is written losslessly: the output's luminance is the scan's own, to rounding.
    jp2_gray = decode_scan((src / "nested/f.jp2").read_bytes()).gray.astype(int)
    assert np.abs(decode_scan((dest / "nested/f.jp2").read_bytes()).gray.astype(int) - jp2_gray).max() <= 2
    assert tuple(round(v) for v in Image.open(dest / "a.jpg").info["dpi"]) == (300, 300)
    assert tuple(round(v) for v in Image.open(dest / "nested/f.jp2").info["dpi"]) == (400, 400)
    assert by_key["bad/empty.jpg"].reason == "empty file (0 bytes)"
    assert by_key["bad/text.jpg"].reason.startswith("not an image")
    assert by_key["bad/truncated.jpg"].reason.startswith("truncated image")
    assert "backslash" in by_key["back\\slash.jpg"].reason
    assert "already colour" in by_key["colour.jpg"].reason
    assert not [p for p in dest.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert not (dest / "back\\slash.jpg").exists()
    assert summary.counts == {"colorized": 9, "skipped_color": 1, "failed": 4}
    assert summary.not_scans == {".txt": 1, ".gif": 1, ".j2k": 1}  # no rows, but counted


def test_rerun_skips_what_is_done_and_redoes_what_changed(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    make_archive(src)
    run(src, dest, tiny_model, shard_size=5)
    outputs = {p: p.stat().st_mtime_ns for p in dest.rglob("*.jpg")}

    second = run(src, dest, tiny_model, shard_size=5)
    assert second.counts == {"skipped_done": 9, "skipped_color": 1, "failed": 4}
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.jpg")} == outputs  # nothing rewritten
    # Skipped unread, a scan is still described as it was found, with what its output lacks.
    for frame in (_manifest(dest), _manifest(dest, second.run_id)):
        pages = _by_key(frame, src)["pages.tif"]
        assert (pages.status, pages.width, pages.height, pages.mode, pages.pages) == (
            "skipped_done",
            "130",
            "100",
            "L",
            "2",
        )
        assert pages.reason.endswith(
            "output already made by "
            + pages.model_id
            + "; page 1 of 2 colorized; the other pages are not in the output"
        )
        assert _by_key(frame, src)["colour.jpg"].width == "120"  # skipped as colour: described too

    write(src / "a.jpg", encode(gray_image(120, 160, seed=9), "JPEG"))  # new content
    os.utime(src / "e.bmp")  # touched only: same bytes
    write(src / "new/fresh.png", encode(gray_image(40, 40), "PNG"))
    (dest / "d.webp").unlink()  # an output someone deleted
    os.truncate(dest / "pages.tif", 1000)  # one a failing disk or a copy cut short, unread since
    third = run(src, dest, tiny_model)
    statuses = {k: r.status for k, r in _by_key(_manifest(dest, third.run_id), src).items()}
    assert statuses["a.jpg"] == statuses["new/fresh.png"] == statuses["d.webp"] == "colorized"
    assert statuses["pages.tif"] == "colorized" and (dest / "pages.tif").stat().st_size > 1000
    assert statuses["e.bmp"] == "skipped_done"
    assert (dest / "d.webp").exists()

    ledger = _manifest(dest)
    assert ledger["source_uri"].is_unique and len(ledger) == 15
    assert _by_key(ledger, src)["pages.tif"].reason.count("page 1 of 2 colorized") == 1  # carried, not piled up
    for row in ledger.itertuples():
        if row.status in ("colorized", "skipped_done"):
            assert Path(row.output_uri).stat().st_size == int(row.output_size)
    assert third.gone == 0

    # Scans that left the source are said, not silently forgotten: their rows and outputs stay.
    # A folder the next listing cannot enter (a link now) hides its scans: they are not said gone.
    (src / "sepia.jpg").unlink()
    (src / "e.bmp").rename(src / "e-renamed.bmp")
    (src / "nested").rename(tmp_path / "nested-moved")
    (src / "nested").symlink_to(tmp_path / "nested-moved")
    fourth = run(src, dest, tiny_model)
    assert (fourth.gone, fourth.gone_last_seen) == (2, third.run_id)
    assert fourth.gone_first == [str(src / "e.bmp"), str(src / "sepia.jpg")]
    assert fourth.counts["colorized"] == 1  # the renamed scan: a new name is a new scan
    ledger = _manifest(dest)
    assert _by_key(ledger, src)["sepia.jpg"].status == "skipped_done" and (dest / "sepia.jpg").exists()
    assert fourth.gone == run(src, dest, tiny_model).gone == 2  # said again while the ledger holds them


def test_names_no_record_can_hold_are_refused_and_the_run_goes_on(run, tmp_path, tiny_model, caplog):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    jpeg = encode(gray_image(40, 60), "JPEG")
    write(src / "ok.jpg", jpeg)
    write(src / os.fsdecode(b"caf\xe9.jpg"), jpeg)  # a Latin-1 name from an old share
    write(src / "bell\x07.jpg", jpeg)  # a control character XML cannot hold
    write(src / "manifests/1999/p.jpg", jpeg)  # a source folder that shares the run records' name
    (src / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")  # a link to nothing
    write(tmp_path / "elsewhere/x.jpg", jpeg)
    (src / "linked").symlink_to(tmp_path / "elsewhere")  # a link to a folder: not followed, but said
    first = run(src, dest, tiny_model)
    assert first.counts == {"colorized": 2, "failed": 4}
    rows = {r.source_uri: r for r in _manifest(dest, first.run_id).itertuples()}
    latin = rows[str(src / "caf\\xe9.jpg")]  # the byte, spelled out
    assert latin.status == "failed" and "the name is not UTF-8 (it holds the byte 0xE9" in latin.reason
    bell = rows[str(src / "bell\x07.jpg")]
    assert bell.status == "failed" and "control character U+0007" in bell.reason
    assert not (dest / os.fsdecode(b"caf\xe9.jpg")).exists() and not (dest / "bell\x07.jpg").exists()
    assert (dest / "manifests/1999/p.jpg").exists()
    gone, linked = rows[str(src / "gone.jpg")], rows[f"{src / 'linked'}/"]  # a folder: its URI ends in /
    assert (
        gone.status == "failed"
        and gone.reason == f"not read: a link to {tmp_path / 'moved-away.jpg'}, which does not exist"
    )
    assert linked.status == "failed" and linked.reason.startswith(
        f"not read: a link to the folder {tmp_path / 'elsewhere'}"
    )

    caplog.clear()
    second = run(src, dest, tiny_model)
    assert second.counts == {"skipped_done": 2, "failed": 4}
    assert "without finishing its manifest" not in caplog.text  # the outputs' folder is no killed run
    assert not (dest / "manifests/1999.csv").exists()
    assert len(_manifest(dest)) == 6

    # The link gone (its folder now given as a source of its own, say): its row leaves the ledger,
    # which would otherwise call it failed for ever.
    (src / "linked").unlink()
    run(src, dest, tiny_model)
    assert f"{src / 'linked'}/" not in set(_manifest(dest)["source_uri"]) and len(_manifest(dest)) == 5


def test_outputs_in_another_format_are_neither_taken_for_done_nor_overwritten(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    write(src / "a.jpg", encode(gray_image(40, 60), "JPEG"))
    run(src, dest, tiny_model)  # -> a.jpg
    write(src / "a.jpg", encode(gray_image(80, 120, seed=3), "JPEG"))  # the scan, rescanned
    as_png = run(src, dest, tiny_model, output_format="png")  # -> a.png
    assert as_png.counts == {"colorized": 1}
    # Back to the source's format: the a.jpg there is the old scan's output, not this one's.
    back = run(src, dest, tiny_model)
    assert back.counts == {"colorized": 1}
    assert decode_scan((dest / "a.jpg").read_bytes()).gray.shape == (80, 120)

    # A new source whose forced output is an existing one's: refused, the existing output kept.
    src, dest = tmp_path / "scans2", tmp_path / "colour2"
    write(src / "a.jpg", encode(gray_image(40, 60), "JPEG"))
    run(src, dest, tiny_model, output_format="png")
    png_before = (dest / "a.png").read_bytes()
    write(src / "a.jpeg", encode(gray_image(40, 60, seed=5), "JPEG"))  # sorts before a.jpg
    both = run(src, dest, tiny_model, output_format="png")
    rows = _by_key(_manifest(dest, both.run_id), src)
    assert rows["a.jpeg"].status == "failed" and "a.png is already the output of a.jpg" in rows["a.jpeg"].reason
    assert rows["a.jpg"].status == "skipped_done"
    assert (dest / "a.png").read_bytes() == png_before

    # A forced format too small for the scan: refused before the model spends anything on it.
    write(src / "wide.png", encode(gray_image(2, 70_000), "PNG"))
    wide = _by_key(_manifest(dest, run(src, dest, tiny_model, output_format="jpeg").run_id), src)["wide.png"]
    assert (
        wide.status == "failed"
        and wide.width == "70000"
        and wide.reason.startswith("a JPEG cannot hold an image over 65,535 pixels a side (this one is 70000x2)")
    )


def test_force_redo_older_and_colorize_color(run, tmp_path, tiny_model, other_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    make_archive(src)
    run(src, dest, tiny_model)
    same = run(src, dest, other_model)  # another model, default: what is done stays done
    assert same.counts.get("colorized", 0) == 0
    redo = run(src, dest, other_model, redo_older=True)
    assert redo.counts["colorized"] == 9
    again = run(src, dest, other_model, redo_older=True)
    assert again.counts.get("colorized", 0) == 0  # now made by this model
    assert set(_manifest(dest)["colour_method"]) == {COLOUR_METHOD, ""}  # "": rows that made no output

    # Outputs made by this model, the way an earlier version of the software coloured them: the
    # ledger of such a destination records another method, or none (from before it was recorded).
    ledger = _manifest(dest)
    made = ledger["colour_method"] == COLOUR_METHOD
    ledger.loc[made, "colour_method"] = ["", "bicubic"] * (made.sum() // 2) + [""] * (made.sum() % 2)
    ledger.to_csv(dest / "manifest.csv", index=False)
    assert run(src, dest, other_model).counts.get("colorized", 0) == 0  # done stays done by default
    upgraded = run(src, dest, other_model, redo_older=True)
    assert upgraded.counts["colorized"] == made.sum() == 9
    assert run(src, dest, other_model, redo_older=True).counts.get("colorized", 0) == 0
    forced = run(src, dest, other_model, force=True, colorize_color=True)
    assert forced.counts["colorized"] == 10  # everything, the colour photo too (as gray)
    row = _by_key(_manifest(dest, forced.run_id), src)["colour.jpg"]
    assert row.status == "colorized" and row.model_id.startswith("other@")


def test_forced_output_format_and_colliding_names(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    write(src / "x.jpg", encode(gray_image(50, 50), "JPEG"))
    write(src / "x.tif", encode(gray_image(50, 50, seed=1), "TIFF"))
    write(src / "y.tif", encode(gray_image(50, 60, seed=2), "TIFF"))
    write(src / "z.png", encode(gray_image(50, 60, seed=3), "PNG"))
    write(src / "z.tiff", encode(gray_image(50, 60, seed=4), "TIFF"))
    summary = run(src, dest, tiny_model, output_format="png")
    rows = _by_key(_manifest(dest, summary.run_id), src)
    assert rows["y.tif"].output_uri == str(dest / "y.png") and Image.open(dest / "y.png").format == "PNG"
    assert sorted(r.status for r in rows.values()) == ["colorized", "colorized", "colorized", "failed", "failed"]
    assert "would overwrite the output of x.jpg" in rows["x.tif"].reason
    assert "would overwrite the output of z.png" in rows["z.tiff"].reason


def test_summary_artifacts_and_one_model_load_per_process(run, tmp_path, tiny_model):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterName

    src, dest = tmp_path / "scans", tmp_path / "colour"
    for i in range(7):
        write(src / f"s{i}.png", encode(gray_image(40, 50, seed=i), "PNG"))
    write(src / "s7.gif", encode(gray_image(40, 50), "GIF"))
    write(src / "README", b"scanned 1931")
    model_cache._colorizer.cache_clear()
    state = __import__("flows.colorize_archive", fromlist=["x"]).colorize_archive(
        source=str(src), dest=str(dest), model=str(tiny_model), shard_size=2, return_state=True
    )
    assert model_cache.loads() == 1  # four shards, one load
    summary = state.result()
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[client.read_flow_run(flow_run_id).name]))
        )
    by_key = {a.key: a for a in artifacts}
    assert runs and by_key["colorize-run-counts"].type == "table"
    assert '"files": 7' in str(by_key["colorize-run-counts"].data).replace("'", '"')
    assert summary.run_id in by_key["colorize-run-summary"].data
    assert "not scans by their extension: 1 without extension, 1 .gif (an image format runs do not read)" in (
        by_key["colorize-run-summary"].data
    )


def test_the_librarys_warnings_reach_the_runs_log_in_prefect(run, tmp_path, tiny_model):
    """A reader thread's warning is filed under the run in Prefect, as the shard's own lines are; the
    metadata it is about is named in the scan's row too."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTextSearch
    from prefect.client.schemas.sorting import LogSort

    src = tmp_path / "scans"
    write(src / "broken-xmp.jpg", encode(gray_image(40, 50), "JPEG", xmp=b"<x:xmpmeta><not-closed"))
    summary = run(src, tmp_path / "colour", tiny_model)
    assert summary.counts == {"colorized": 1}
    (row,) = _manifest(tmp_path / "colour", summary.run_id).itertuples()
    assert row.reason.startswith("the scan's XMP is not well-formed XML and is not in the output (")
    deadline = time.time() + 30
    while True:  # logs reach the server in the background
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(text=LogFilterTextSearch(query="XMP is not well-formed")),
                sort=LogSort.TIMESTAMP_DESC,
            )
        ours = [log for log in logs if log.name == "colorize.provenance" and "XMP is not well-formed" in log.message]
        if ours or time.time() > deadline:
            break
        time.sleep(0.5)
    assert ours, [log.message for log in logs]
    assert ours[0].flow_run_id and ours[0].task_run_id  # under the shard's task, in its flow run
    assert ours[0].message.startswith(f"{src / 'broken-xmp.jpg'}: ")  # it names the scan


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "colorize.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cli_exit_codes(tmp_path, tiny_model, cli_env):
    src = tmp_path / "scans"
    write(src / "ok.png", encode(gray_image(40, 40), "PNG"))
    write(src / "broken.jpg", b"nope")
    write(src / "checksums.md5", b"0" * 32)
    # A memory budget smaller than one scan: done one at a time, nothing refused.
    args = ["--model", str(tiny_model), "--batch-size", "2", "--memory-gb", "0.001"]
    done = _cli(["run", str(src), str(tmp_path / "out"), *args], cli_env)
    assert done.returncode == 0, done.stderr
    assert "colorized 1, failed 1" in done.stdout
    assert f"failed: {src / 'broken.jpg'}: not an image" in done.stdout  # the reason, where it is seen
    report = re.search(r"^report: (file://\S+)$", done.stdout, re.M)
    assert report is not None and Path(report[1].removeprefix("file://")).is_file()
    assert "left alone, not scans by their extension: 1 .md5" in done.stdout
    (src / "broken.jpg").unlink()  # gone from the source since: said, with its name
    again = _cli(["run", str(src), str(tmp_path / "out"), *args], cli_env)
    assert again.returncode == 0 and f"1 file recorded under {src} was not found there" in again.stdout
    assert f"a moved archive: colorize relocate): {src / 'broken.jpg'}\n" in again.stdout

    missing = _cli(["run", str(tmp_path / "nothing-here"), str(tmp_path / "out2"), "--model", str(tiny_model)], cli_env)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    both_models = _cli(
        ["run", str(src), str(tmp_path / "o6"), "--model", str(tiny_model), "--registry", "r", "--dry-run"], cli_env
    )
    assert both_models.returncode == 0 and "so the registry r's production model is not used" in both_models.stderr
    if not torch.cuda.is_available():  # told before the server starts, in a dry run too; nothing made
        for dry in ([], ["--dry-run"]):
            cmd = ["run", str(src), str(tmp_path / "o7"), "--model", str(tiny_model), "--device", "cuda", *dry]
            no_gpu = _cli(cmd, cli_env)
            assert no_gpu.returncode == 1 and "PyTorch sees no CUDA GPU" in no_gpu.stderr
            assert not (tmp_path / "o7").exists()
    not_a_folder = write(tmp_path / "a-file", b"x")  # told before the Prefect server starts, and in a dry run
    for dry in ([], ["--dry-run"]):
        refused = _cli(["run", str(src), str(not_a_folder), "--model", str(tiny_model), *dry], cli_env)
        assert refused.returncode == 1 and f"the destination {not_a_folder} is a file" in refused.stderr
    assert "Traceback" not in missing.stderr  # Prefect logs the failed task and flow: one line each, here

    default = _cli(["run", str(src), str(tmp_path / "out-default")], cli_env)  # the packaged starter model
    assert default.returncode == 0, default.stderr
    rows = pd.read_csv(tmp_path / "out-default/manifest.csv", dtype=str, keep_default_na=False)
    assert set(rows.loc[rows["status"] == "colorized", "model_id"]) == {load_model().model_id}
    assert load_model().model_id.startswith("starter@")

    (tmp_path / "a-folder.safetensors").mkdir()
    folder = _cli(["run", str(src), str(tmp_path / "out3"), "--model", str(tmp_path / "a-folder.safetensors")], cli_env)
    assert folder.returncode == 1 and "Traceback" not in folder.stderr and "a-folder.safetensors" in folder.stderr
    for missing_model in (tmp_path / "no-model", tmp_path / "no-model.safetensors", tmp_path / "no.pth"):
        no_model = _cli(["run", str(src), str(tmp_path / "out3"), "--model", str(missing_model)], cli_env)
        assert no_model.returncode == 1 and f"no model at {missing_model}" in no_model.stderr
        assert "Beginning flow run" not in no_model.stderr  # told before the half minute Prefect takes to start
    assert not (tmp_path / "out3" / "ok.png").exists()

    no_limit = _cli(["run", str(src), str(tmp_path / "out4"), *args, "--max-megapixels", "-1"], cli_env)
    assert no_limit.returncode == 2 and "max-megapixels" in no_limit.stderr  # refused, not every file failed
    for dry in ([], ["--dry-run"]):  # refused before Prefect starts, and by a dry run as the run would
        both = _cli(
            ["run", str(src), str(tmp_path / "out5"), *args, "--dask-local", "2", "--dask-address", "tcp://x:1", *dry],
            cli_env,
        )
        assert both.returncode == 1 and "not both" in both.stderr and not (tmp_path / "out5").exists()
        assert "Beginning flow run" not in both.stderr

    # `colorize run ... --dry-run | head -1`: the reader gone, the dry run leaves as `yes` would.
    piped = subprocess.Popen(
        [sys.executable, "-m", "colorize.cli", "run", str(src), str(tmp_path / "o8"), *args, "--dry-run"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert piped.stdout is not None
    piped.stdout.close()
    _, stderr = piped.communicate(timeout=300)
    assert piped.returncode == 141 and b"Broken pipe" not in stderr and b"Errno" not in stderr, stderr


def test_a_gpu_slot_the_server_does_not_have_is_refused_saying_how_to_make_it(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    write(src / "a.png", encode(gray_image(40, 40), "PNG"))
    with pytest.raises(
        RuntimeError, match=r"the GPU slot .no-such-slot. is no global .* \(prefect gcl create no-such-slot --limit 1;"
    ):
        run(src, dest, tiny_model, gpu_slot="no-such-slot")
    assert not (dest / "a.png").exists() and not (dest / LEASE_KEY).exists()


def test_a_dry_run_says_what_a_run_would_do_and_writes_nothing(run, tmp_path, tiny_model):
    from typer.testing import CliRunner

    from colorize.cli import app

    src, dest = tmp_path / "scans", tmp_path / "colour"
    for i in range(3):
        write(src / f"s{i}.png", encode(gray_image(40, 50, seed=i), "PNG"))
    write(src / "notes.txt", b"box 3")

    def dry(source: Path = src) -> str:
        result = CliRunner().invoke(app, ["run", str(source), str(dest), "--model", str(tiny_model), "--dry-run"])
        assert result.exit_code == 0, result.output
        return result.output

    assert "would colorize 3\n" in dry() and "not scans by their extension: 1 .txt" in dry()
    assert not dest.exists()  # nothing written, not even the destination folder
    run(src, dest, tiny_model)
    before = _tree_hashes(dest)
    assert "would colorize 0\n" in dry() and "would record skipped_done 3" in dry()

    os.utime(src / "s0.png", (1e9, 1e9))  # touched: checked by its content
    write(src / "s9.png", encode(gray_image(40, 50, seed=9), "PNG"))
    assert "would colorize 2 (1 skipped after all if their content is unchanged)" in dry()
    moved = tmp_path / "moved"
    src.rename(moved)
    out = dry(moved)
    assert "would record failed 3" in out and f"colorize relocate {dest} {src} {moved}" in out
    assert _tree_hashes(dest) == before  # the ledger, the manifests and the outputs as they were


def test_a_killed_run_is_finished_by_the_next(tmp_path, tiny_model, cli_env):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    for i in range(24):
        write(src / f"d{i // 8}/s{i:02d}.png", encode(gray_image(300, 400, seed=i), "PNG"))
    args = ["run", str(src), str(dest), "--model", str(tiny_model), "--shard-size", "2", "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "colorize.cli", *args], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = 240
        import time

        start = time.time()
        while time.time() - start < deadline:
            parts = list((dest / "manifests").rglob("shard-*.csv")) if (dest / "manifests").exists() else []
            if len(parts) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run never wrote a shard manifest")
    finally:
        proc.kill()
        proc.wait()
    killed_outputs = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*.png")}
    for data in killed_outputs.values():
        decode_scan(data)  # every output there is whole
    held = json.loads((dest / LEASE_KEY).read_bytes())
    assert held["pid"] == proc.pid  # the killed run's lease, taken over at once below: its process is gone
    # What a write cut off by the kill leaves (the kill rarely lands mid-write, so made here for sure).
    (dest / TEMP_DIR).mkdir(exist_ok=True)
    (dest / TEMP_DIR / f"{TEMP_PREFIX}{proc.pid}@{HOST}-cut").write_bytes(b"half a file")

    done = _cli(args, cli_env)
    assert done.returncode == 0, done.stderr
    runs = sorted((dest / "manifests").glob("*.csv"))
    assert len(runs) == 2  # the killed run's records were folded in, and the new run's
    last = _manifest(dest, runs[-1].stem)  # run ids sort by start time
    assert len(last) == 24 and last["source_uri"].is_unique
    assert set(last["status"]) <= {"colorized", "skipped_done"}
    recorded_before = set(_manifest(dest, runs[0].stem)["source_uri"])
    assert len(recorded_before) >= 2
    redone = set(last[last["status"] == "colorized"]["source_uri"])
    assert not (redone & recorded_before)  # what the killed run recorded is not done twice
    # Nor what it wrote without recording it (the shards in flight): kept, by what its XMP says.
    assert not (redone & {str(src / key) for key in killed_outputs})
    assert {key: (dest / key).read_bytes() for key in killed_outputs} == killed_outputs
    ledger = _manifest(dest)
    assert len(ledger) == 24 and all(Path(u).exists() for u in ledger["output_uri"])
    assert not [p for p in dest.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert not [p for p in (dest / "manifests").iterdir() if p.is_dir()]
    assert not (dest / LEASE_KEY).exists()


def test_outputs_no_record_names_are_kept_when_this_scan_and_model_made_them(run, tmp_path, tiny_model, other_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    for name, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.bmp", "BMP")):
        write(src / name, encode(gray_image(40, 50, seed=len(name) + ord(name[0])), fmt))
    first = run(src, dest, tiny_model)

    def forget() -> dict[str, bytes]:
        """The ledger lost (or never written: a run killed before recording), the outputs kept."""
        for csv in [dest / "manifest.csv", *(dest / "manifests").glob("*.csv")]:
            csv.unlink()
        return {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}

    made = forget()
    rows = _by_key(_manifest(dest, run(src, dest, tiny_model).run_id), src)
    for name in ("a.jpg", "b.png"):
        assert rows[name].status == "skipped_done", rows[name].reason
        assert f"found whole, made by run {first.run_id} before it stopped" in rows[name].reason
        assert rows[name].output_sha256 == hashlib.sha256(made[name]).hexdigest() and rows[name].width == "50"
        assert (dest / name).read_bytes() == made[name]
    assert rows["c.bmp"].status == "colorized"  # a BMP says nothing about itself: made again

    # A file this software did not make (a person's own colour version) is never replaced unasked.
    write(src / "d.jpg", encode(gray_image(40, 50, seed=7), "JPEG"))
    theirs = write(dest / "d.jpg", encode(np.full((40, 50, 3), (40, 60, 200), np.uint8), "JPEG")).read_bytes()
    rows = _by_key(_manifest(dest, run(src, dest, tiny_model).run_id), src)
    assert rows["d.jpg"].status == "failed" and (dest / "d.jpg").read_bytes() == theirs
    assert rows["d.jpg"].reason == (
        f"not written: {dest / 'd.jpg'} is already there, and neither the ledger nor its metadata says "
        "archive-colorize made it; move it away, or pass --force to replace it"
    )
    assert _by_key(_manifest(dest, run(src, dest, tiny_model, force=True).run_id), src)["d.jpg"].status == "colorized"
    assert recorded_in((dest / "d.jpg").read_bytes())["source_sha256"]
    (src / "d.jpg").unlink()
    (dest / "d.jpg").unlink()

    # A changed scan, another model, or --force: made again.
    write(src / "a.jpg", encode(gray_image(40, 50, seed=99), "JPEG"))
    forget()
    assert run(src, dest, tiny_model).counts == {"colorized": 2, "skipped_done": 1}
    forget()
    assert run(src, dest, other_model).counts == {"colorized": 3}
    forget()
    assert run(src, dest, other_model, force=True).counts == {"colorized": 3}


def test_an_output_is_one_scans_whatever_is_run_into_its_destination_and_whatever_the_ledger_lost(
    run, tmp_path, tiny_model
):
    src, dest = tmp_path / "archive", tmp_path / "colour"
    write(src / "a.jpg", encode(gray_image(60, 80, seed=1), "JPEG"))
    write(src / "sub" / "a.jpg", encode(gray_image(70, 90, seed=2), "JPEG"))
    write(src / "b.jpg", encode(gray_image(300, 400, seed=3), "JPEG"))
    run(src, dest, tiny_model)
    outputs = {k: v for k, v in _tree_hashes(dest).items() if k.endswith(".jpg")}

    def forget() -> None:
        for csv in [dest / "manifest.csv", *(dest / "manifests").glob("*.csv")]:
            csv.unlink()

    # A folder of the archive run on its own into the archive's destination: sub/a.jpg's output
    # would be a.jpg, which is the archive's a.jpg's, by the ledger and, the ledger lost, by its XMP.
    rows = _by_key(_manifest(dest, run(src / "sub", dest, tiny_model).run_id), src / "sub")
    assert rows["a.jpg"].status == "failed"
    assert rows["a.jpg"].reason == (
        f"output a.jpg is already the output of {src / 'a.jpg'}, a scan of {src}, which holds {src / 'sub'}; "
        "give this source its own destination"
    )
    forget()
    rows = _by_key(_manifest(dest, run(src / "sub", dest, tiny_model).run_id), src / "sub")
    assert rows["a.jpg"].status == "failed"
    assert rows["a.jpg"].reason == (
        f"not written: {dest / 'a.jpg'} is already there, and its metadata says it was made from another scan, "
        f"{src / 'a.jpg'}; move it away, or pass --force to replace it"
    )
    assert {k: v for k, v in _tree_hashes(dest).items() if k.endswith(".jpg")} == outputs

    # The ledger lost and an output cut short since (its XMP, at its head, intact): made again;
    # the whole ones are kept.
    forget()
    b = dest / "b.jpg"
    b.write_bytes(b.read_bytes()[: b.stat().st_size * 2 // 3])
    again = run(src, dest, tiny_model)
    rows = _by_key(_manifest(dest, again.run_id), src)
    assert rows["b.jpg"].status == "colorized" and decode_scan(b.read_bytes()).width == 400
    assert recorded_in(b.read_bytes())["run_id"] == again.run_id
    assert rows["a.jpg"].status == rows["sub/a.jpg"].status == "skipped_done"

    # A changed scan whose new output a killed run wrote but never recorded: kept, not made twice.
    ledger = {p: p.read_bytes() for p in [dest / "manifest.csv", *(dest / "manifests").glob("*.csv")]}
    write(src / "b.jpg", encode(gray_image(300, 400, seed=4), "JPEG"))
    assert _by_key(_manifest(dest, run(src, dest, tiny_model).run_id), src)["b.jpg"].status == "colorized"
    new_output = b.read_bytes()
    for csv in [dest / "manifest.csv", *(dest / "manifests").glob("*.csv")]:
        csv.unlink()
    for path, data in ledger.items():
        path.write_bytes(data)
    rows = _by_key(_manifest(dest, run(src, dest, tiny_model).run_id), src)
    assert rows["b.jpg"].status == "skipped_done" and "found whole" in rows["b.jpg"].reason
    assert b.read_bytes() == new_output

    # The destination moved (without `colorize relocate`, so the ledger names the old place): still
    # no folder of the archive writes over the archive's outputs.
    moved = tmp_path / "moved"
    dest.rename(moved)
    kept = (moved / "a.jpg").read_bytes()
    rows = _by_key(_manifest(moved, run(src / "sub", moved, tiny_model).run_id), src / "sub")
    assert rows["a.jpg"].status == "failed" and f"made from another scan, {src / 'a.jpg'}" in rows["a.jpg"].reason
    assert (moved / "a.jpg").read_bytes() == kept

    # The other order: the folder's run first, then the archive's, whose a.jpg finds its output taken.
    other = tmp_path / "colour2"
    run(src / "sub", other, tiny_model)
    rows = _by_key(_manifest(other, run(src, other, tiny_model).run_id), src)
    assert rows["a.jpg"].status == "failed" and rows["a.jpg"].reason == (
        "output a.jpg is already the output of sub/a.jpg, written there by a run of its folder into this "
        "destination; give that folder's runs their own destination"
    )


def test_a_ledger_that_is_no_longer_one_stops_the_run_and_is_left_as_it_is(run, tmp_path, tiny_model):
    import csv

    from colorize.manifest import ManifestError

    src, dest = tmp_path / "scans", tmp_path / "colour"
    write(src / "a.png", encode(gray_image(40, 50), "PNG"))
    run(src, dest, tiny_model)
    ledger = dest / "manifest.csv"
    good = ledger.read_bytes()
    with open(ledger, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    with open(ledger, "w", newline="", encoding="utf-8") as f:  # re-saved as a European spreadsheet does
        csv.writer(f, delimiter=";").writerows(rows)
    resaved = ledger.read_bytes()
    with pytest.raises(ManifestError, match="is not a manifest this tool wrote: it has no run_id, source_uri, status"):
        run(src, dest, tiny_model)
    assert ledger.read_bytes() == resaved  # its history is not rewritten into one junk row
    ledger.write_bytes(good[: good.rindex(b",colorized,") + 4])  # cut short mid-row
    with pytest.raises(ManifestError, match="is damaged: line 2 has the status 'col'"):
        run(src, dest, tiny_model)


def test_a_source_folder_named_like_the_ledger_is_refused_and_the_ledger_kept(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    write(src / "manifest.csv" / "x.png", encode(gray_image(40, 50), "PNG"))
    write(src / "y.png", encode(gray_image(40, 50, seed=1), "PNG"))
    for _ in range(2):  # the ledger stays a file, night after night
        rows = _by_key(_manifest(dest, run(src, dest, tiny_model).run_id), src)
        assert rows["manifest.csv/x.png"].status == "failed"
        assert "would make manifest.csv in the destination a folder" in rows["manifest.csv/x.png"].reason
        assert (dest / "manifest.csv").is_file() and rows["y.png"].status in ("colorized", "skipped_done")


def test_a_link_in_the_destination_never_leads_an_output_onto_a_scan(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    master = write(src / "box0" / "a.png", encode(gray_image(40, 50), "PNG")).read_bytes()
    write(src / "box1" / "b.png", encode(gray_image(40, 50, seed=2), "PNG"))
    dest.mkdir()
    (dest / "box0").symlink_to(src / "box0")
    rows = _by_key(_manifest(dest, run(src, dest, tiny_model).run_id), src)
    assert (src / "box0" / "a.png").read_bytes() == master
    assert rows["box0/a.png"].status == "failed" and "leads out of" in rows["box0/a.png"].reason
    assert rows["box1/b.png"].status == "colorized"


def test_a_run_on_a_destination_another_run_holds_stops_before_writing_anything(run, tmp_path, tiny_model, cli_env):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    for name in ("a", "b"):
        write(src / f"{name}.png", encode(gray_image(40, 50, seed=len(name)), "PNG"))
    with DestinationLease(open_storage(str(dest)), "nightly"):  # a run still going, in this process
        with pytest.raises(DestinationBusyError, match="in use by run nightly"):
            run(src, dest, tiny_model)
        busy = _cli(["run", str(src), str(dest), "--model", str(tiny_model)], cli_env)
        assert busy.returncode == 1 and "in use by run nightly" in busy.stderr
        written = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and TEMP_DIR not in p.parts]
        assert written == [LEASE_KEY]  # no output, no manifest part, no folded run
    done = run(src, dest, tiny_model)
    assert done.counts == {"colorized": 2} and not (dest / LEASE_KEY).exists()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run_with_its_own_server(tmp_path: Path, model: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A ``colorize run`` with no Prefect API configured (so it starts its own server), caught well
    inside its flow run. Returns the process, its server's port, and its destination."""
    import re
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "fresh-home")
    src, dest = tmp_path / "scans", tmp_path / "colour"
    for i in range(200):
        write(src / f"s{i:03d}.png", encode(gray_image(40, 50, seed=i), "PNG"))
    log = tmp_path / "stderr.txt"
    args = ["run", str(src), str(dest), "--model", str(model), "--shard-size", "2", "--batch-size", "1"]
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "colorize.cli", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)  # fmt: skip
    try:
        start = time.time()
        while not list(dest.glob("manifests/*/shard-*.csv")):  # well inside the flow run
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() - start < 300, "the run never wrote a shard manifest"
            time.sleep(0.05)
        port = int(re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", log.read_text()).group(1))
        assert _listening(port)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, port, dest


@pytest.mark.slow
def test_a_terminated_run_stops_the_prefect_server_it_started(tmp_path, tiny_model):
    """SIGTERM (a scheduler's timeout) mid-run: the run exits 143 and leaves no Prefect server behind."""
    import signal

    proc, port, dest = _run_with_its_own_server(tmp_path, tiny_model)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert not _listening(port), "the run's Prefect server outlived it"
    assert len(list(dest.glob("*.png"))) < 200  # it was stopped mid-run, not after the end


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="orphaned servers are found through /proc (Linux)")
def test_the_server_of_a_killed_run_is_stopped_by_the_next_command(tmp_path, tiny_model, cli_env):
    """SIGKILL (the out-of-memory killer) runs no exit code: the server is orphaned, and the next
    ``colorize`` command that runs a flow stops it."""
    import time

    proc, port, _ = _run_with_its_own_server(tmp_path / "killed", tiny_model)
    proc.kill()
    proc.wait()
    time.sleep(1)
    assert _listening(port)  # orphaned: nobody stopped it
    write(tmp_path / "next" / "a.png", encode(gray_image(40, 50), "PNG"))
    after = _cli(["run", str(tmp_path / "next"), str(tmp_path / "next-out"), "--model", str(tiny_model)], cli_env)
    assert after.returncode == 0, after.stderr
    assert re.search(r"stopped \d+ temporary Prefect server\(s\) left running by killed colorize", after.stderr)
    deadline = time.time() + 30
    while _listening(port) and time.time() < deadline:
        time.sleep(0.2)
    assert not _listening(port), "the orphaned server is still running"


def test_library_never_imports_prefect():
    code = (
        "import pkgutil, importlib, sys, colorize\n"
        "for m in pkgutil.walk_packages(colorize.__path__, 'colorize.'):\n"
        "    if m.name != 'colorize.cli':\n"
        "        importlib.import_module(m.name)\n"
        "assert 'prefect' not in sys.modules, 'prefect imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_first_run_on_a_fresh_machine_starts_its_own_prefect(tmp_path, tiny_model):
    """No server configured, empty Prefect home: the ephemeral server must come up the first time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "fresh-home")
    src = tmp_path / "scans"
    write(src / "one.png", encode(gray_image(40, 40), "PNG"))
    done = _cli(["run", str(src), str(tmp_path / "out"), "--model", str(tiny_model)], env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "one.png").exists()


def test_help_shows_flags_as_flags():
    from typer.testing import CliRunner

    from colorize.cli import app

    for command in ([], ["run"], ["train"], ["models"], ["models", "list"]):
        shown = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "--help" in shown.output, shown.output
        assert "<bool>" not in shown.output and "BOOLEAN" not in shown.output  # no value to give


def test_the_summarys_failures_show_names_and_reasons_as_they_are():
    from flows.colorize_archive import _md_code, _md_text

    name = "/scans/a`<img src=x onerror=alert(1)>`](javascript:alert(1)).jpg"
    span = _md_code(name)
    fence = span.split(" ", 1)[0]
    assert fence == "``" and span == f"`` {name} ``"  # no run of backticks inside can close it
    assert _md_text("not an image: <b>x</b> [a](b)\n*c*") == r"not an image: \<b\>x\</b\> \[a\]\(b\) \*c\*"


def test_names_at_the_terminal_show_what_they_hold_and_do_nothing():
    from colorize.plan import describe_not_scans
    from colorize.storage import printable

    # A key's control characters (an escape sequence, a carriage return) would act on the terminal.
    assert printable("s3://scans/odd/ctl\x01here\x1b[2J.jpg") == "s3://scans/odd/ctl\\x01here\\x1b[2J.jpg"
    assert printable("/scans/café.jpg") == "/scans/café.jpg"
    assert printable("/scans/a\x9b2Jb.jpg") == "/scans/a\\x9b2Jb.jpg"  # C1's CSI, as ESC [ is
    # "x.jpg " is no JPEG: its extension is quoted, not shown as if real JPEGs were left alone.
    assert describe_not_scans({".jpg ": 1, ".txt": 2}) == "2 .txt, 1 '.jpg '"
    # A copy stand's raw masters are images this tool does not read: said as such, not as any file.
    assert describe_not_scans({".dng": 2, ".heic": 1}) == (
        "2 .dng (an image format runs do not read), 1 .heic (an image format runs do not read)"
    )


def test_ledger_upkeep_old_folder_rows_empty_ledgers_and_destinations_under_a_file(tmp_path):
    from colorize.manifest import (
        LEDGER_KEY,
        ManifestError,
        ManifestRow,
        finish_run,
        read_csv,
        to_frame,
        write_csv,
        write_part,
    )
    from colorize.plan import check_destination

    dest = open_storage(str(tmp_path / "dest"))
    src = "/archive/scans"
    failed = dict(source_size=0, source_mtime="1970-01-01T00:00:00Z", status="failed")
    old_rows = [  # written before a folder's URI ended in "/": its reason says it was a folder
        ManifestRow("r0", f"{src}/box1", reason="not read: cannot list this folder: Permission denied", **failed),
        ManifestRow("r0", f"{src}2/box1/", reason="not read: cannot list this folder: Permission denied", **failed),
        ManifestRow("r0", f"{src}/x.jpg", reason="not an image", **failed),
    ]
    write_csv(dest, LEDGER_KEY, to_frame(old_rows))
    _, gone = finish_run(dest, "20261128T000000Z-abcdef", listed=src)  # a whole run of /archive/scans, box1 read now
    kept = set(read_csv(dest, LEDGER_KEY)["source_uri"])
    assert kept == {f"{src}2/box1/", f"{src}/x.jpg"}  # another source's folder, and a file's row, stay
    assert gone["source_uri"].tolist() == [f"{src}/x.jpg"]  # not listed: gone, unlike folders' rows
    # An S3 key ending in "/" that holds bytes is a refused object, not a folder hiding its files.
    marker = ManifestRow("r2", f"{src}/", reason="not read: a key ending in '/' that holds 1 bytes", **failed)
    write_part(dest, "20261129T000000Z-abcdef", "plan-000001", [marker])
    write_csv(dest, LEDGER_KEY, to_frame([ManifestRow("r1", f"{src}/y.jpg", reason="not an image", **failed)]))
    _, gone = finish_run(dest, "20261129T000000Z-abcdef", listed=src)
    assert gone["source_uri"].tolist() == [f"{src}/y.jpg"]

    (tmp_path / "dest" / LEDGER_KEY).write_bytes(b"")  # emptied by hand: said, with what to do
    with pytest.raises(ManifestError, match="cannot be read as a manifest: .*; the run stops rather than rewrite it"):
        read_csv(dest, LEDGER_KEY)

    afile = write(tmp_path / "afile", b"x")
    with pytest.raises(ValueError, match=f"cannot be made: {afile} is a file, not a folder"):
        check_destination(open_storage(str(tmp_path / "scans")), open_storage(str(afile / "out")))
