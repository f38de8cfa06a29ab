"""Shards on a real Dask LocalCluster of worker processes, under the session's one Prefect server."""

from __future__ import annotations

import os

import pandas as pd

from colorize.manifest import worker_id
from flows.runners import GPU_RESOURCE, shard_runner
from tests.helpers import encode, gray_image, write


def test_a_local_cluster_of_two_processes_shares_the_shards(tmp_path, tiny_model, prefect_api_url, monkeypatch):
    from flows.colorize_archive import colorize_archive

    # The flow hands its own API to the workers; without that each would start an ephemeral server.
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    src, dest = tmp_path / "scans", tmp_path / "colour"
    for i in range(16):
        write(src / f"s{i:02d}.png", encode(gray_image(120, 160, seed=i), "PNG"))
    summary = colorize_archive(
        source=str(src), dest=str(dest), model=str(tiny_model), shard_size=2, batch_size=2, dask_local=2,
        device="cpu",
    )  # fmt: skip
    assert summary.counts == {"colorized": 16}
    assert os.environ["PREFECT_API_URL"].rstrip("/") == prefect_api_url.rstrip("/")
    rows = pd.read_csv(dest / f"manifests/{summary.run_id}.csv", dtype=str, keep_default_na=False)
    workers = set(rows["worker"])
    assert len(workers) == 2, workers  # both worker processes did work ...
    assert worker_id() not in workers  # ... and the flow's own process did none
    assert all((dest / f"s{i:02d}.png").exists() for i in range(16))


def test_runner_choice():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(shard_runner(None, 0, "cpu"), ThreadPoolTaskRunner)
    remote = shard_runner("tcp://scheduler:8786", 4, "cuda")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://scheduler:8786"
    local = shard_runner(None, 3, "cuda")
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["resources"] == {GPU_RESOURCE: 1}


def test_dask_options_without_the_dask_extra_are_refused_naming_it_before_anything_starts(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from colorize.cli import app

    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as on an install without '.[dask]'
    write(tmp_path / "scans" / "a.png", encode(gray_image(40, 40), "PNG"))
    for how in (["--dask-local", "2"], ["--dask-address", "tcp://127.0.0.1:1"]):
        result = CliRunner().invoke(app, ["run", str(tmp_path / "scans"), str(tmp_path / "out"), *how])
        assert result.exit_code == 1, result.output
        assert "needs prefect-dask" in result.output and "pip install 'archive-colorize[dask]'" in result.output
        assert not (tmp_path / "out").exists()
