"""Shared fixtures: one Prefect test server per session, and small models made on the spot."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import flows  # noqa: F401 - sets Prefect's start-up timeout before Prefect is imported
from tests.helpers import free_port, make_model


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Exported ONNX graphs go to a folder of this session, not the user's cache."""
    os.environ["COLORIZE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    """Start one Prefect API server for the whole session and return its URL.

    Flow runs in this process talk to it; subprocesses (the CLI, Dask workers) get it through
    ``PREFECT_API_URL`` instead of starting an ephemeral server each.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # The harness's own default (30 s) is too short for a 2-core machine.
    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def cli_env(prefect_api_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running ``colorize`` in a subprocess against the session's server."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = prefect_api_url
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.pop("PREFECT_PROFILES_PATH", None)
    return env


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab-mode model of width 4 (random weights: enough to exercise every path quickly)."""
    folder = tmp_path_factory.mktemp("model")
    make_model(folder, width=4)
    return folder


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model2")
    make_model(folder, width=4, seed=1, name="other")
    return folder


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's S3 server in its own process on 127.0.0.1, for the whole session."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/moto-api/")
                conn.getresponse().read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
