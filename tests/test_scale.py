"""Collection scale: planning streams in bounded memory; killed runs are finished exactly once."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.plan_memory import make_collection, measure
from colorize.imaging import decode_scan
from colorize.provenance_read import read_provenance
from colorize.storage.local import TEMP_PREFIX
from tests.helpers import encode, gray_image, write


def test_planning_200k_keys_stays_within_a_generous_memory_bound(tmp_path):
    make_collection(tmp_path, 200_000)
    result = measure(tmp_path)
    assert result["planned_skips"] == 200_000 and result["planned_work"] == 0
    # Measured about 260 MB (ledger of 200k sources included); bench/plan_memory.py prints it.
    assert result["growth_mb"] < 700, result


def _manifests(dest: Path) -> list[pd.DataFrame]:
    return [pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted((dest / "manifests").glob("*.csv"))]


@pytest.mark.slow
def test_kill_at_random_points_then_finish_each_output_exactly_once(tmp_path, tiny_model, cli_env):
    src, dest = tmp_path / "scans", tmp_path / "colour"
    for i in range(30):
        write(src / f"box{i % 3}/s{i:02d}.png", encode(gray_image(200, 260, seed=i), "PNG"))
    args = [sys.executable, "-m", "colorize.cli", "run", str(src), str(dest), "--model", str(tiny_model),
            "--shard-size", "2", "--batch-size", "2"]  # fmt: skip
    rng = random.Random(7)
    for _ in range(3):
        proc = subprocess.Popen(args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 12.0))
        proc.kill()
        proc.wait()
        for p in dest.rglob("*.png"):
            decode_scan(p.read_bytes())  # whatever a kill leaves at an output path is whole
    done = subprocess.run(args, env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    outputs = sorted(p.relative_to(dest) for p in dest.rglob("*.png"))
    assert outputs == sorted(p.relative_to(src) for p in src.rglob("*.png"))
    assert not [p for p in dest.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    runs = _manifests(dest)
    for run in runs:
        assert run["source_uri"].is_unique  # no source twice in one run
    # Each output was made once and recorded once: by the run that made it ("colorized"), or, when a
    # kill came between the two, by the next run, which found it whole ("found whole, made by run X").
    # The output's own XMP names the run that made it, so a second making would show.
    makers: dict[str, list[str]] = {}
    for run in runs:
        for row in run.itertuples():
            if row.status == "colorized":
                makers.setdefault(row.source_uri, []).append(row.run_id)
            elif (found := re.search(r"found whole, made by run (\S+) before it stopped", row.reason)) is not None:
                makers.setdefault(row.source_uri, []).append(found[1])
    assert sorted(makers) == sorted(str(p) for p in src.rglob("*.png"))
    for uri, made_by in makers.items():
        assert len(made_by) == 1, (uri, made_by)
        out = dest / Path(uri).relative_to(src)
        assert read_provenance(out.read_bytes())["run_id"] == made_by[0], uri
    assert len(runs[-1]) == 30  # the finishing run accounts for every source
    ledger = pd.read_csv(dest / "manifest.csv", dtype=str, keep_default_na=False)
    assert len(ledger) == 30 and all(Path(u).exists() for u in ledger["output_uri"])
