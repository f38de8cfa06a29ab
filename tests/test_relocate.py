"""Scans that moved (remounted, copied, uploaded) and destinations shared by two folders: nothing done
twice, no output overwritten by another source's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from colorize.cli import app
from colorize.lease import DestinationLease
from colorize.manifest import new_run_id, part_key, relocate
from colorize.storage import open_storage
from tests.helpers import encode, gray_image, write


@pytest.fixture
def run(prefect_api_url):
    from flows.colorize_archive import colorize_archive

    def go(source: Path | str, dest: Path, model: Path, **kw):
        summary = colorize_archive(source=str(source), dest=str(dest), model=str(model), **kw)
        rows = pd.read_csv(dest / f"manifests/{summary.run_id}.csv", dtype=str, keep_default_na=False)
        return summary, {row.source_uri.rpartition("/")[2]: row for row in rows.itertuples()}

    return go


def _scans(folder: Path) -> None:
    write(folder / "a.jpg", encode(gray_image(40, 60), "JPEG"))
    write(folder / "box" / "b.png", encode(gray_image(50, 30, seed=2), "PNG"))


def _outputs(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dest.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png")}


def _relocate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["relocate", *args])
    return result.exit_code, result.output


def test_a_moved_archive_is_refused_until_relocated_then_skipped(run, tmp_path, tiny_model):
    old, new, dest = tmp_path / "nas1" / "scans", tmp_path / "nas2" / "scans", tmp_path / "colour"
    _scans(old)
    run(old, dest, tiny_model)
    made = _outputs(dest)
    new.parent.mkdir()
    old.rename(new)  # a remount: same files, same times, another path

    _, rows = run(new, dest, tiny_model)
    assert {k: r.status for k, r in rows.items()} == {"a.jpg": "failed", "b.png": "failed"}
    assert f"colorize relocate {dest} {old} {new}" in rows["b.png"].reason
    assert _outputs(dest) == made  # nothing overwritten, nothing redone

    # A run killed before folding its records in: a dry run counts them, and leaves them, and
    # everything else there, as it was.
    first = sorted((dest / "manifests").glob("*.csv"))[0]
    write(dest / part_key(new_run_id(), "shard-000001"), first.read_bytes())
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    code, out = _relocate(str(dest), str(old), str(new), "--dry-run")
    assert code == 0 and "would move 2 ledger rows" in out
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    code, out = _relocate(str(dest), str(old), str(new))
    assert code == 0 and "moved 2 ledger rows" in out
    ledger = pd.read_csv(dest / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(ledger["source_uri"]) == [str(new / "a.jpg"), str(new / "box" / "b.png")]

    _, rows = run(new, dest, tiny_model)
    assert {k: r.status for k, r in rows.items()} == {"a.jpg": "skipped_done", "b.png": "skipped_done"}
    assert all("unchanged since last run" in r.reason for r in rows.values())
    assert _outputs(dest) == made


def test_a_copy_with_new_times_is_checked_by_content_after_relocation(run, tmp_path, tiny_model):
    old, new, dest = tmp_path / "old", tmp_path / "new", tmp_path / "colour"
    _scans(old)
    run(old, dest, tiny_model)
    for path in old.rglob("*.*"):  # copied without their times, as `cp` does
        write(new / path.relative_to(old), path.read_bytes())
    write(new / "box" / "b.png", encode(gray_image(50, 30, seed=9), "PNG"))  # rescanned meanwhile
    shutil.rmtree(old)

    assert _relocate(str(dest), str(old), str(new))[0] == 0
    _, rows = run(new, dest, tiny_model)
    assert rows["a.jpg"].status == "skipped_done" and "content unchanged (same sha256)" in rows["a.jpg"].reason
    assert rows["b.png"].status == "colorized"


def test_two_folders_sharing_a_destination_never_overwrite_each_others_outputs(run, tmp_path, tiny_model):
    first, second, dest = tmp_path / "1950s", tmp_path / "1960s", tmp_path / "colour"
    _scans(first)
    run(first, dest, tiny_model)
    made = _outputs(dest)
    write(second / "a.jpg", encode(gray_image(40, 60, seed=7), "JPEG"))  # the same name, another photo
    write(second / "c.jpg", encode(gray_image(40, 60, seed=8), "JPEG"))

    _, rows = run(second, dest, tiny_model)
    assert rows["a.jpg"].status == "failed" and f"already the output of {first / 'a.jpg'}" in rows["a.jpg"].reason
    assert "give this source its own destination" in rows["a.jpg"].reason
    assert rows["c.jpg"].status == "colorized"
    assert _outputs(dest)["a.jpg"] == made["a.jpg"]


def test_relocate_refuses_what_it_cannot_vouch_for(run, tmp_path, tiny_model):
    old, dest = tmp_path / "old", tmp_path / "colour"
    _scans(old)
    run(old, dest, tiny_model)
    before = (dest / "manifest.csv").read_bytes()
    (tmp_path / "empty").mkdir()

    code, out = _relocate(str(dest), str(tmp_path / "elsewhere"), str(old))
    assert code == 1 and "nothing to move" in out
    code, out = _relocate(str(dest), str(old), str(tmp_path / "empty"))
    assert code == 1 and "is " + str(tmp_path / "empty") + " where they went?" in out
    code, out = _relocate(str(dest), str(old), str(old / "box"))
    assert code == 1 and "one inside the other" in out
    assert (dest / "manifest.csv").read_bytes() == before
    assert not (dest / "manifests" / "lease.json").exists()  # given back after a refusal

    with DestinationLease(open_storage(str(dest)), "nightly"):  # a run going on there
        code, out = _relocate(str(dest), str(old), str(tmp_path / "elsewhere"))
    assert code == 1 and "in use by run nightly" in out
    assert (dest / "manifest.csv").read_bytes() == before


def test_relocated_rows_meet_rows_already_at_the_new_place() -> None:
    ledger = pd.DataFrame(
        {
            "source_uri": ["/a/x.jpg", "/a/y.jpg", "/b/x.jpg", "/b/y.jpg", "/c/z.jpg"],
            "status": ["colorized", "colorized", "failed", "skipped_done", "colorized"],
            "run_id": ["20260101T000000Z-000001", "20260101T000000Z-000001", "20260102T000000Z-000002",
                       "20251231T000000Z-000000", "20260101T000000Z-000001"],
            "output_uri": ["/out/x.jpg", "/out/y.jpg", "", "/out/y.jpg", "/old-out/z.jpg"],
        }
    )  # fmt: skip
    moved, rows = relocate(ledger, "/a", "/b")
    by_uri = moved.set_index("source_uri")
    assert rows == 2 and sorted(by_uri.index) == ["/b/x.jpg", "/b/y.jpg", "/c/z.jpg"]
    assert by_uri.loc["/b/x.jpg", "status"] == "colorized"  # done beats a later refusal
    assert by_uri.loc["/b/y.jpg", "run_id"].startswith("20260101")  # of two done rows, the later run's
    # A destination that moved: its outputs' URIs follow.
    assert relocate(ledger, "/old-out", "/new-out")[0].set_index("source_uri").loc["/c/z.jpg", "output_uri"] == (
        "/new-out/z.jpg"
    )


def test_a_folder_moved_inside_the_source_is_relocated_with_its_outputs(run, tmp_path, tiny_model):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    _scans(src)  # a.jpg, box/b.png
    run(src, dest, tiny_model)
    made = _outputs(dest)
    (src / "1950s").mkdir()
    (src / "box").rename(src / "1950s" / "box")
    (dest / "1950s").mkdir()
    (dest / "box").rename(dest / "1950s" / "box")

    assert _relocate(str(dest), str(src / "box"), str(src / "1950s" / "box"))[0] == 0  # the scans
    assert _relocate(str(dest), str(dest / "box"), str(dest / "1950s" / "box"))[0] == 0  # their outputs
    _, rows = run(src, dest, tiny_model)
    assert {k: r.status for k, r in rows.items()} == {"a.jpg": "skipped_done", "b.png": "skipped_done"}
    assert _outputs(dest) == made and (dest / "1950s" / "box" / "b.png").exists()
