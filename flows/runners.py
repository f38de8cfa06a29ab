"""Where shard tasks run: threads in the flow's process, or a Dask cluster (prefect-dask).

Kept apart from the flows so that choosing a runner is one small function, and the flows read
like the job.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect.concurrency.sync import concurrency
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

# A Dask worker advertises this resource when it has a GPU (``dask worker --resources GPU=1``);
# a shard that runs on CUDA asks for one, so a worker runs one GPU shard at a time. On one GPU host,
# ``--dask-local K`` makes K such workers share the GPU: several processes are what lifts a GPU run
# past one process's GIL-bound per-file work (bench/processes.py, bench/RESULTS.md).
GPU_RESOURCE = "GPU"


def shard_runner(dask_address: str | None, dask_local: int, device: str) -> TaskRunner:
    """The task runner for shards.

    Args:
        dask_address: an existing Dask scheduler (``tcp://host:8786``); not with ``dask_local``.
        dask_local: start a LocalCluster of this many worker processes (one thread each); 0: none.
        device: the run's device; on ``cuda`` each local worker advertises one GPU.

    Without either, shards run one at a time in the flow's process: a shard already keeps the
    cores (and the GPU) busy with its own reader, model and writer threads.
    """
    if not dask_address and dask_local <= 0:
        return ThreadPoolTaskRunner(max_workers=1)
    require_dask()
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    cluster: dict[str, Any] = {"n_workers": dask_local, "threads_per_worker": 1, "processes": True}
    if device == "cuda":
        cluster["resources"] = {GPU_RESOURCE: 1}
    return DaskTaskRunner(cluster_kwargs=cluster)


def require_dask() -> None:
    """Raise RuntimeError, naming the extra to install, where prefect-dask is not installed."""
    try:
        import prefect_dask  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"running shards on Dask (--dask-local, --dask-address) needs prefect-dask ({err}): "
            "pip install 'archive-colorize[dask]'"
        ) from None


def gpu_slot_held(gpu_slot: str | None) -> AbstractContextManager[Any]:
    """Around a flow's GPU work: hold the Prefect global concurrency limit ``gpu_slot`` (None: none).

    A limit that does not exist is refused with how to make it (Prefect's own error is a traceback).
    """
    if not gpu_slot:
        return nullcontext()
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(gpu_slot)
        except ObjectNotFound:
            raise RuntimeError(
                f"the GPU slot {gpu_slot!r} is no global concurrency limit of this Prefect server: create it "
                f"(prefect gcl create {gpu_slot} --limit 1; deploy/README.md), or run without one"
            ) from None
    return concurrency(gpu_slot, occupy=1, strict=True)


def shard_resources(dask: bool, device: str) -> AbstractContextManager[Any]:
    """Around a shard's ``submit``: on Dask with CUDA, ask for one GPU."""
    if not dask or device != "cuda":
        return nullcontext()
    import dask as dask_module

    return dask_module.annotate(resources={GPU_RESOURCE: 1})


def current_api_url() -> str | None:
    """The API this flow run talks to, the ephemeral server's included."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/") or None


def share_api_url(api_url: str | None) -> None:
    """Give Dask worker processes this flow's Prefect API.

    Without one, each worker process would start its own ephemeral Prefect server: minutes, and
    flaky. Worker processes inherit the environment, so setting it before the cluster starts is
    enough; a URL the user configured is left alone.
    """
    if api_url and not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = api_url
