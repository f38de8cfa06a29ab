"""One loaded model per process.

This module holds no Prefect task on purpose: a task shipped to another process (Dask, a process
pool) by value carries a fresh copy of its own module's globals, so a cache kept there would be
refilled by every task. A plain module is imported once per process and its cache survives.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from colorize.engine import Colorizer
from colorize.modelfile import load_model

_lock = threading.Lock()


@lru_cache(maxsize=2)
def _colorizer(model_spec: str, device: str, backend: str, endpoint_url: str | None) -> Colorizer:
    return Colorizer(load_model(model_spec, endpoint_url=endpoint_url), device=device, backend=backend)


def get_colorizer(
    model_spec: str, device: str = "auto", backend: str = "auto", endpoint_url: str | None = None
) -> Colorizer:
    """The colorizer for a resolved model spec on a device, loaded on first use in this process."""
    with _lock:  # two shards starting together in one process must not load it twice
        return _colorizer(model_spec, device, backend, endpoint_url)


def loads() -> int:
    """How many models this process has loaded (for tests and logs)."""
    return _colorizer.cache_info().misses
