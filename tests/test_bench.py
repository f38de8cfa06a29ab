"""The throughput benchmark runs, end to end, on a few scans: its report is whole and every scan was
colorized. No speed is checked here: bench/RESULTS.md has the measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("seed_loop", "model_only", "pipeline", "io_only")


def test_the_throughput_benchmark_on_eight_scans(tmp_path):
    report, work = tmp_path / "throughput.json", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--n", "8", "--seed-n", "2", "--width", "8",
         "--tiff-every", "4", "--json", str(report), "--workdir", str(work)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    out = json.loads(report.read_text())
    assert (out["n"], out["model_width"]) == (8, 8) and out["cores"] >= 1 and out["device"].startswith("cpu")
    assert out["peak_rss_mb"] > 0
    for name in MEASUREMENTS:
        assert out[name]["images_per_s"] > 0 and out[name]["cpu_s_per_image"] > 0, name
    assert out["seed_loop"]["n"] == 2 and all(out[name]["n"] == 8 for name in MEASUREMENTS[1:])
    for ratio in ("c_over_a", "c_over_b", "cpu_c_over_b_plus_d", "c_over_core_ceiling"):
        assert out[ratio] > 0, ratio

    scans = sorted(p.relative_to(work / "scans") for p in (work / "scans").rglob("scan-*"))
    assert len(scans) == 8 and any(p.suffix == ".tif" for p in scans)  # the 16-bit TIFFs too
    for folder in ("out-c", "out-d"):  # (c) and (d): every scan has its output and its colorized row
        assert sorted(p.relative_to(work / folder) for p in (work / folder).rglob("scan-*")) == scans
        ledger = pd.read_csv(work / folder / "manifest.csv", dtype=str, keep_default_na=False)
        assert len(ledger) == 8 and set(ledger["status"]) == {"colorized"}
    assert len(list((work / "out-a").iterdir())) == 2  # (a): the source loop's 256x256 results
