"""The ``colorize_archive`` flow: nightly runs and backfills are the same flow with other parameters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from colorize.imaging import DEFAULT_MAX_PIXELS
from colorize.manifest import Ledger, finish_run, new_run_id, run_key, unfinished_runs, write_part
from colorize.model_cache import get_colorizer
from colorize.modelfile import resolve_model_spec
from colorize.plan import RunOptions, Shard, SkipBatch, plan
from colorize.process import ShardProcessor
from colorize.storage import StorageError, open_storage

# Shards in flight at once: enough to keep every worker busy, few enough that a listing of
# millions of files never turns into millions of pending tasks.
MAX_SHARDS_IN_FLIGHT = 4


@dataclass
class RunSummary:
    run_id: str
    dest: str
    model_id: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@task(cache_policy=NO_CACHE)
def start_run(
    source: str, dest: str, model: str | None, registry: str | None, options: dict[str, object]
) -> RunOptions:
    """Check both ends, resolve the model, and fold in manifests that killed runs left behind."""
    logger = get_run_logger()
    src, dst = open_storage(source, options.get("endpoint_url")), open_storage(dest, options.get("endpoint_url"))
    if next(iter(src.list()), None) is None:  # also raises StorageError when the source is missing
        logger.warning("source %s holds no files", src.uri)
    run_id = new_run_id()
    for orphan in unfinished_runs(dst, exclude=run_id):
        logger.warning("run %s ended without finishing its manifest: folding in its records", orphan)
        finish_run(dst, orphan)
    spec = resolve_model_spec(model, registry)
    colorizer = get_colorizer(spec, str(options.get("device", "auto")))
    logger.info("run %s: %s -> %s with model %s on %s", run_id, src.uri, dst.uri, colorizer.model_id, colorizer.device)
    return RunOptions(run_id=run_id, source=src.uri, dest=dst.uri, model=spec, model_id=colorizer.model_id, **options)  # type: ignore[arg-type]


@task(cache_policy=NO_CACHE)
def colorize_shard(opts: RunOptions, shard: Shard) -> dict[str, int]:
    """Colorize one shard and record its rows at the destination as soon as it is done."""
    logger = get_run_logger()
    source, dest = open_storage(opts.source, opts.endpoint_url), open_storage(opts.dest, opts.endpoint_url)
    processor = ShardProcessor(opts, get_colorizer(opts.model, opts.device), source, dest)
    rows = processor.run(shard.items)
    write_part(dest, opts.run_id, shard.name, rows)
    counts = Counter(r.status for r in rows)
    seconds = sum(r.seconds for r in rows)
    logger.info("%s: %d files, %s (%.1f s of work)", shard.name, len(rows), dict(counts), seconds)
    return dict(counts)


@task(cache_policy=NO_CACHE)
def record_skips(opts: RunOptions, batch: SkipBatch) -> dict[str, int]:
    """Record the files planning settled without touching them (already done, refused)."""
    write_part(open_storage(opts.dest, opts.endpoint_url), opts.run_id, batch.name, batch.rows)
    return dict(Counter(r.status for r in batch.rows))


@task(cache_policy=NO_CACHE)
def finish_manifest(opts: RunOptions) -> RunSummary:
    """Assemble the run manifest and update the cumulative ledger."""
    run = finish_run(open_storage(opts.dest, opts.endpoint_url), opts.run_id)
    failed = run[run["status"] == "failed"]
    return RunSummary(
        run_id=opts.run_id, dest=opts.dest, model_id=opts.model_id,
        counts={k: int(v) for k, v in run["status"].value_counts().items()},
        failures=list(zip(failed["source_uri"], failed["reason"], strict=True)),
    )  # fmt: skip


@task(cache_policy=NO_CACHE)
def publish_summary(summary: RunSummary) -> None:
    """The run's summary as Prefect artifacts: counts per status, and a short report."""
    statuses = ("colorized", "skipped_done", "skipped_color", "failed")
    create_table_artifact(
        key="colorize-run-counts",
        table=[{"status": s, "files": summary.counts.get(s, 0)} for s in statuses],
        description=f"Files per status in run {summary.run_id}",
    )
    lines = [
        f"# Colorize run `{summary.run_id}`",
        f"Model `{summary.model_id}`, destination `{summary.dest}`.",
        "",
        *(f"- **{s}**: {summary.counts.get(s, 0)}" for s in statuses),
        "",
        f"Manifest: `{summary.dest.rstrip('/')}/{run_key(summary.run_id)}`",
    ]
    if summary.failures:
        lines += ["", "## Failures (first 20)", ""]
        lines += [f"- `{uri}`: {reason}" for uri, reason in summary.failures[:20]]
    create_markdown_artifact(key="colorize-run-summary", markdown="\n".join(lines))


@flow(name="colorize-archive", task_runner=ThreadPoolTaskRunner(max_workers=1))
def colorize_archive(
    source: str,
    dest: str,
    model: str | None = None,
    registry: str | None = None,
    batch_size: int = 8,
    shard_size: int = 256,
    device: str = "auto",
    force: bool = False,
    redo_older: bool = False,
    colorize_color: bool = False,
    output_format: str = "same",
    max_megapixels: float = DEFAULT_MAX_PIXELS / 1e6,
    endpoint_url: str | None = None,
    progress: bool = False,
) -> RunSummary:
    """Colorize every gray scan under ``source`` into ``dest``, skipping what is already done."""
    options = dict(
        batch_size=batch_size, shard_size=shard_size, device=device, force=force, redo_older=redo_older,
        colorize_color=colorize_color, output_format=output_format,
        max_pixels=int(max_megapixels * 1e6), endpoint_url=endpoint_url,
    )  # fmt: skip
    opts = start_run(source, dest, model, registry, options)
    src, dst = open_storage(opts.source, endpoint_url), open_storage(opts.dest, endpoint_url)
    bar = tqdm(unit="file", desc="colorize", disable=not progress)
    in_flight: list[PrefectFuture[dict[str, int]]] = []

    def settle(keep: int) -> None:
        while len(in_flight) > keep:
            done = wait(in_flight[:1]).done
            for fut in done:
                bar.update(sum(fut.result().values()))  # .result() re-raises a shard's fatal error
                in_flight.remove(fut)

    for unit in plan(opts, src, dst, Ledger.load(dst)):
        if isinstance(unit, Shard):
            in_flight.append(colorize_shard.submit(opts, unit))
        else:
            in_flight.append(record_skips.submit(opts, unit))
        settle(MAX_SHARDS_IN_FLIGHT)
    settle(0)
    bar.close()
    summary = finish_manifest(opts)
    publish_summary(summary)
    get_run_logger().info("run %s finished: %s", summary.run_id, summary.counts)
    return summary


__all__ = ["RunSummary", "StorageError", "colorize_archive"]
