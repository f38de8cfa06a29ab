"""The deployment files end to end: a real Prefect server, deploy/prefect.yaml, a process worker, a backfill.

No Docker and no GPU: the worker runs the flow from this checkout, as the systemd unit does on a GPU
host, and the backfill is told ``device=cpu``. Each piece runs as its own process with the commands
deploy/README.md gives, so what passes here is what an operator types.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
import yaml
from PIL import Image

from tests.helpers import encode, free_port, gray_image, make_model, write

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"
K8S_TEMPLATE = ROOT / "deploy" / "k8s-job-template.json"
POOL, SLOT = "gpu-host", "gpu-0"  # the names deploy/prefect.yaml uses
# Generous for a loaded 2-core machine: the server starts in about 20 s, a run takes 15-20 s.
SERVER_TIMEOUT_S, CLI_TIMEOUT_S, RUN_TIMEOUT_S = 180, 180, 240
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

pytestmark = pytest.mark.slow


@dataclass
class PrefectServer:
    url: str  # the API's URL, .../api
    env: dict[str, str]  # what every client process (CLI, worker) runs with
    log: Path


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any Prefect setting, a Prefect home of its own, and no prompts.

    COLORIZE_APP_DIR is left out as well: the deploy must keep the pull step's placeholder, and only the
    worker says where the code is (as in production).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "COLORIZE_APP_DIR"}
    env.update(PREFECT_HOME=str(home), PREFECT_CLI_PROMPT="false", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A long-running process in a session of its own, its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """Stop a process and everything it started, including children in sessions of their own.

    Prefect starts flow runs (and the server its API process) in new sessions, so killing the process
    group is not enough: the whole tree is collected first, then terminated, then killed.
    """
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _prefect(server: PrefectServer, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a ``prefect`` CLI command against the server; its output, or a failure that shows it."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=ROOT,
        env=env or server.env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port of 127.0.0.1, with its own home and SQLite database."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_env = _clean_env(home) | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        # No scheduler: the nightly deployment's schedule must never create runs during the test.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",  # nothing looks at it; saves start-up time
    }
    log = home / "server.log"
    proc = _spawn(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        server_env,
        log,
    )
    try:
        _wait_healthy(url, proc, log)
        yield PrefectServer(url=url, env=_clean_env(home) | {"PREFECT_API_URL": url}, log=log)
    finally:
        _stop(proc)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_TIMEOUT_S} s:\n{_tail(log)}")


def _api(server: PrefectServer, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", json=body, timeout=30)


def _wait_for_run(server: PrefectServer, run_id: str) -> dict:
    """Poll the flow run until it reaches a terminal state; the run as the API returns it."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = _api(server, "GET", f"/flow_runs/{run_id}").json()
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(1)
    return run


def _run_logs(server: PrefectServer, run_id: str) -> str:
    logs = _api(server, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}).json()
    return "\n".join(entry["message"] for entry in logs)[-6000:]


def _slot_events(server: PrefectServer, run_id: str) -> list[str]:
    """What the flow run did with the GPU slot, in order, from the server's events (stored a little later)."""
    names = ["prefect.concurrency-limit.acquired", "prefect.concurrency-limit.released"]
    body = {"filter": {"event": {"name": names}, "related": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50}
    deadline = time.monotonic() + 30
    while True:
        events = _api(server, "POST", "/events/filter", body).json()["events"]
        phases = [
            e["event"].rsplit(".", 1)[1]
            for e in sorted(events, key=lambda e: e["occurred"])
            if e["resource"]["prefect.resource.name"] == SLOT
        ]
        if len(phases) >= 2 or time.monotonic() > deadline:
            return phases
        time.sleep(1)


def _param_args(params: dict[str, object]) -> list[str]:
    """``-p key=value`` for each parameter, as an operator would type them."""
    return [arg for key, value in params.items() for arg in ("-p", f"{key}={value}")]


def _scans(folder: Path) -> dict[str, tuple[int, int]]:
    """A few gray PNGs of different sizes, one in a subfolder; key -> (width, height)."""
    sizes = {"a.png": (64, 40), "box/b.png": (37, 52), "box/c.png": (48, 48)}
    for i, (key, (width, height)) in enumerate(sizes.items()):
        write(folder / key, encode(gray_image(height, width, seed=i), "PNG"))
    return sizes


def test_nightly_deployment_is_scheduled_at_two_and_never_overlaps():
    deployments = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    assert set(deployments) == {"nightly", "backfill", "on-demand"}
    nightly = deployments["nightly"]
    assert nightly["entrypoint"] == "flows/colorize_archive.py:colorize_archive"
    [schedule] = nightly["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "Europe/Amsterdam"
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert not deployments["backfill"]["schedules"] and not deployments["on-demand"]["schedules"]
    assert deployments["on-demand"]["entrypoint"] == "flows/retrain.py:retrain"
    for deployment in deployments.values():
        assert deployment["parameters"]["gpu_slot"] == SLOT and deployment["work_pool"]["name"] == POOL


def test_backfill_runs_from_prefect_yaml_on_a_process_worker(server: PrefectServer, tmp_path: Path):
    src, dest, model = tmp_path / "scans", tmp_path / "colour", tmp_path / "model"
    sizes = _scans(src)
    make_model(model, width=4)

    _prefect(server, "work-pool", "create", POOL, "--type", "process")
    # The worker's environment tells the pull step where the code is, as the image and systemd unit do.
    worker_log = tmp_path / "worker.log"
    worker_env = server.env | {"COLORIZE_APP_DIR": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = _spawn(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            POOL,
            "--type",
            "process",
            "--install-policy",
            "never",
            "--name",
            "test-worker",
        ],
        worker_env,
        worker_log,
    )
    try:
        _prefect(server, "gcl", "create", SLOT, "--limit", "1")
        _prefect(server, "deploy", "--prefect-file", "deploy/prefect.yaml", "--all")
        _check_deployments(server)

        # As an operator tries it on a machine without a GPU: the CPU, in the flow's own process.
        params = {"source": src, "dest": dest, "model": model, "device": "cpu", "shard_size": 2, "dask_local": 0}
        out = _prefect(server, "deployment", "run", "colorize-archive/backfill", *_param_args(params))
        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert match, out
        run = _wait_for_run(server, match.group(1))
        assert run["state_type"] == "COMPLETED", (
            f"flow run ended {run['state_type']}\n--- run logs\n{_run_logs(server, run['id'])}\n"
            f"--- worker\n{_tail(worker_log)}"
        )
    finally:
        _stop(worker)  # before the server goes, so the worker never sees it vanish

    assert run["parameters"]["gpu_slot"] == SLOT  # the deployment's default
    assert _slot_events(server, run["id"]) == ["acquired", "released"]  # the run held the GPU slot ...
    assert _api(server, "GET", f"/v2/concurrency_limits/{SLOT}").json()["active_slots"] == 0  # ... and gave it back
    for key, (width, height) in sizes.items():
        with Image.open(dest / key) as out_image:
            assert out_image.size == (width, height) and out_image.mode == "RGB"
    ledger = pd.read_csv(dest / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(str(Path(u).relative_to(src)) for u in ledger["source_uri"]) == sorted(sizes)
    assert set(ledger["status"]) == {"colorized"}
    assert {(int(r.width), int(r.height)) for r in ledger.itertuples()} == set(sizes.values())
    assert (dest / "manifests" / f"{ledger['run_id'].iloc[0]}.csv").exists()


def _check_deployments(server: PrefectServer) -> None:
    """All three deployments reached the server as prefect.yaml describes them."""
    nightly = _api(server, "GET", "/deployments/name/colorize-archive/nightly").json()
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "Europe/Amsterdam"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    # The pull step keeps its placeholder: the worker's environment resolves it when a run starts.
    assert nightly["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $COLORIZE_APP_DIR }}"}}
    ]
    backfill = _api(server, "GET", "/deployments/name/colorize-archive/backfill").json()
    assert not backfill["schedules"] and "source" not in backfill["parameters"]
    assert (backfill["parameters"]["batch_size"], backfill["parameters"]["dask_local"]) == (64, 4)  # the GPU's
    retrain = _api(server, "GET", "/deployments/name/retrain/on-demand").json()
    assert retrain["parameters"]["config"]["device"] == "cuda" and retrain["work_pool_name"] == POOL


def test_kubernetes_job_template_is_accepted_and_asks_for_one_gpu(server: PrefectServer):
    template = json.loads(K8S_TEMPLATE.read_text())
    created = _api(
        server, "POST", "/work_pools/", {"name": "gpu-k8s", "type": "kubernetes", "base_job_template": template}
    )
    assert created.status_code == 201, created.text  # the server checks every placeholder is a declared variable
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert template["job_configuration"]["env"]["PREFECT_API_URL"] == "{{ prefect_api_url }}"
    assert "command" not in container  # the image's CMD is replaced by args; an ENTRYPOINT would not be
    assert template["variables"]["properties"]["image"]["default"]
