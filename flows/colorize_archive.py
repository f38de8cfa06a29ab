"""The ``colorize_archive`` flow: nightly runs and backfills are the same flow with other parameters."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from colorize.c2pa_signing import load_signing_key
from colorize.imaging import DEFAULT_MAX_PIXELS, image_extensions
from colorize.inflight import memory_budget
from colorize.lease import DestinationLease
from colorize.manifest import Ledger, finish_run, run_key, unfinished_runs, write_part
from colorize.model_cache import get_colorizer
from colorize.plan import RunOptions, Shard, SkipBatch, describe_not_scans, new_run_options, plan
from colorize.process import ShardProcessor
from colorize.report import DEFAULT_SAMPLE, report_link, write_report
from colorize.storage import StorageError, open_storage
from flows.runners import current_api_url, gpu_slot_held, shard_resources, shard_runner, share_api_url

# Failures a run's summary names (the artifact, the CLI's first lines); the manifest has them all.
SUMMARY_FAILURES = 20


@dataclass
class RunSummary:
    run_id: str
    dest: str
    model_id: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source URI, reason): the first SUMMARY_FAILURES
    report_url: str = ""  # the run report: file:// URI, or presigned link for S3
    not_scans: dict[str, int] = field(default_factory=dict)  # files left alone, by extension ("" for none)
    source: str = ""
    gone: int = 0  # files the ledger records under the source that this run did not find there
    gone_last_seen: str = ""  # the latest run that saw one of them
    gone_first: list[str] = field(default_factory=list)  # the first SUMMARY_FAILURES of them, latest seen first

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@task(cache_policy=NO_CACHE)
def start_run(
    source: str, dest: str, model: str | None, registry: str | None, options: dict[str, object]
) -> RunOptions:
    """Check both ends and resolve the model; nothing is written at the destination yet."""
    logger = get_run_logger()
    endpoint = options.get("endpoint_url")
    src, dst = open_storage(source, endpoint), open_storage(dest, endpoint)  # type: ignore[arg-type]
    if next(iter(src.list()), None) is None:  # also raises StorageError when the source is missing
        if src.root_is_file():
            raise StorageError(f"the source {src.uri} is one file, not a folder of scans: give the folder it is in")
        logger.warning("source %s holds no files", src.uri)
    opts = new_run_options(src, dst, model, registry, options)  # shards load the model, wherever they run
    logger.info("run %s: %s -> %s with model %s", opts.run_id, src.uri, dst.uri, opts.model_id)
    if opts.sign_cert and opts.sign_key:  # a certificate C2PA refuses stops the run here, not per file
        load_signing_key(opts.sign_cert, opts.sign_key, opts.endpoint_url)
    return opts


@task(cache_policy=NO_CACHE)
def recover_killed_runs(opts: RunOptions) -> None:
    """Remove the temp files killed runs left, and fold in the manifests they did not finish."""
    logger = get_run_logger()
    dst = open_storage(opts.dest, opts.endpoint_url)
    if swept := dst.sweep_temp():
        logger.info("removed %d temp files that killed runs left at %s", swept, dst.uri)
    for orphan in unfinished_runs(dst, exclude=opts.run_id):
        logger.warning("run %s ended without finishing its manifest: folding in its records", orphan)
        finish_run(dst, orphan)


@task(cache_policy=NO_CACHE)
def colorize_shard(opts: RunOptions, shard: Shard) -> dict[str, int]:
    """Colorize one shard and record its rows at the destination as soon as it is done."""
    logger = get_run_logger()
    source, dest = open_storage(opts.source, opts.endpoint_url), open_storage(opts.dest, opts.endpoint_url)
    processor = ShardProcessor(
        opts, get_colorizer(opts.model, opts.device, opts.backend, opts.endpoint_url), source, dest
    )
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
    run, gone = finish_run(open_storage(opts.dest, opts.endpoint_url), opts.run_id, listed=opts.source)
    failed = run[run["status"] == "failed"].head(SUMMARY_FAILURES)  # a moved archive's run refuses millions
    last_seen = gone["run_id"].iloc[0] if len(gone) else ""
    summary = RunSummary(
        run_id=opts.run_id, dest=opts.dest, model_id=opts.model_id,
        counts={k: int(v) for k, v in run["status"].value_counts().items()},
        failures=list(zip(failed["source_uri"], failed["reason"], strict=True)),
        source=opts.source, gone=len(gone), gone_last_seen=last_seen,
        gone_first=gone["source_uri"].head(SUMMARY_FAILURES).tolist(),
    )  # fmt: skip
    if summary.gone:
        get_run_logger().warning("%s", gone_line(summary))
    return summary


@task(cache_policy=NO_CACHE)
def write_run_report(opts: RunOptions, sample: int, link_seconds: int) -> str:
    """Write DEST/reports/<run_id>.html; return a link to it, or "" when it could not be written."""
    dest = open_storage(opts.dest, opts.endpoint_url)
    try:
        key = write_report(dest, opts.run_id, sample=sample, endpoint_url=opts.endpoint_url)
        return report_link(dest, key, link_seconds)
    except Exception:  # noqa: BLE001 - the run's work and manifest are done; a missing page must not fail it
        get_run_logger().warning("run %s: the report could not be written", opts.run_id, exc_info=True)
        return ""


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
    if summary.not_scans:
        lines += ["", f"Left alone, not scans by their extension: {describe_not_scans(summary.not_scans)}."]
    if summary.report_url:
        lines += ["", f"Report: [{summary.run_id}.html]({summary.report_url})"]
    if summary.gone:
        lines += ["", f"## Not found in the source: {summary.gone}", "", _md_text(gone_line(summary)) + ":", ""]
        lines += [f"- {_md_code(uri)}" for uri in summary.gone_first]
    if summary.failures:
        lines += ["", f"## Failures (first {SUMMARY_FAILURES})", ""]
        lines += [f"- {_md_code(uri)}: {_md_text(reason)}" for uri, reason in summary.failures]
    create_markdown_artifact(key="colorize-run-summary", markdown="\n".join(lines))


def gone_line(summary: RunSummary) -> str:
    """What a run says of the files the ledger records under its source that it did not find."""
    files, were, their = ("file", "was", "its") if summary.gone == 1 else ("files", "were", "their")
    return (
        f"{summary.gone} {files} recorded under {summary.source} {were} not found there: deleted, renamed or moved "
        f"since run {summary.gone_last_seen} or earlier ({their} rows and outputs are kept; a moved archive: "
        "colorize relocate)"
    )


def _md_code(text: str) -> str:
    """``text`` as a Markdown code span that no backtick in it can close (CommonMark 6.1)."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def _md_text(text: str) -> str:
    """``text`` as Markdown that shows it as it is: no markup or HTML from a file name or a reason."""
    return re.sub(r"([\\`*_{}\[\]()#+!|~<>&-])", r"\\\1", " ".join(text.split()))


@flow(name="colorize-shards")
def colorize_shards(
    opts: RunOptions, on_dask: bool = False, in_flight: int = 8, progress: bool = False
) -> dict[str, int]:
    """Plan the run as a stream and colorize its shards, a bounded number in flight at a time.

    Returns:
        The files under the source left alone as not scans, counted by extension.
    """
    src, dst = open_storage(opts.source, opts.endpoint_url), open_storage(opts.dest, opts.endpoint_url)
    bar = tqdm(unit="file", desc="colorize", disable=not progress)
    pending: list[PrefectFuture[dict[str, int]]] = []
    not_scans: Counter[str] = Counter()
    for unit in plan(opts, src, dst, Ledger.load(dst), not_scans=not_scans):
        if isinstance(unit, Shard):
            with shard_resources(on_dask, opts.device):  # only shards need a GPU, not skip records
                pending.append(colorize_shard.submit(opts, unit))
        else:
            pending.append(record_skips.submit(opts, unit))
        while len(pending) >= in_flight:
            oldest = pending.pop(0)
            bar.update(sum(oldest.result().values()))  # .result() waits, and re-raises a shard's fatal error
    for fut in pending:
        bar.update(sum(fut.result().values()))
    bar.close()
    if images := image_extensions(not_scans):
        get_run_logger().warning(
            "images in formats runs do not read were left alone under %s (%s); convert them to TIFF, PNG or "
            "JPEG to colorize them",
            src.uri, ", ".join(f"{not_scans[e]} {e}" for e in sorted(images)),
        )  # fmt: skip
    return dict(not_scans)


@flow(name="colorize-archive", task_runner=ThreadPoolTaskRunner(max_workers=1))
def colorize_archive(
    source: str,
    dest: str,
    model: str | None = None,
    registry: str | None = None,
    batch_size: int = 8,
    shard_size: int = 256,
    device: str = "auto",
    backend: str = "auto",
    gpu_jpeg: bool = True,  # on a GPU, decode, merge and encode JPEG scans there (colorize/jpeg_lane.py)
    force: bool = False,
    redo_older: bool = False,
    colorize_color: bool = False,
    output_format: str = "same",
    max_megapixels: float = DEFAULT_MAX_PIXELS / 1e6,
    memory_gb: float | None = None,  # for scans in flight, per process; default a quarter of RAM (shared)
    endpoint_url: str | None = None,
    dask_address: str | None = None,  # an existing Dask scheduler, tcp://host:8786
    dask_local: int = 0,  # or a LocalCluster of this many worker processes
    shards_in_flight: int = 8,  # planned shards submitted ahead of the ones running
    progress: bool = False,
    gpu_slot: str | None = None,  # a global concurrency limit held around the GPU work (deploy/README.md)
    report_sample: int = DEFAULT_SAMPLE,  # most before/after pairs in the run report
    report_link_seconds: int = 7 * 24 * 3600,  # lifetime of the report's presigned link (S3); 0: no link
    sign_cert: str | None = None,  # C2PA signing certificate chain (PEM), path or s3:// URI
    sign_key: str | None = None,  # its private key (PEM), path or s3:// URI
) -> RunSummary:
    """Colorize every gray scan under ``source`` into ``dest``, skipping what is already done."""
    if dask_address and dask_local > 0:
        raise ValueError("give --dask-local or --dask-address, not both: one starts a cluster, the other uses one")
    options = dict(
        batch_size=batch_size, shard_size=shard_size, device=device, backend=backend, gpu_jpeg=gpu_jpeg, force=force,
        redo_older=redo_older, colorize_color=colorize_color, output_format=output_format,
        max_pixels=int(max_megapixels * 1e6), endpoint_url=endpoint_url, sign_cert=sign_cert, sign_key=sign_key,
        memory_budget=memory_budget(memory_gb, dask_local),
    )  # fmt: skip
    on_dask = bool(dask_address or dask_local > 0)
    opts = start_run(source, dest, model, registry, options)
    # One run at a time on a destination (colorize/lease.py), from before it reads the ledger until
    # its manifest is written.
    with DestinationLease(open_storage(dest, endpoint_url), opts.run_id) as lease:
        recover_killed_runs(opts)
        # One model on a GPU at a time on a single host (deploy/README.md); Dask workers use GPU resources.
        with gpu_slot_held(gpu_slot):
            if on_dask:
                share_api_url(current_api_url())
            runner = shard_runner(dask_address, dask_local, device)
            not_scans = colorize_shards.with_options(task_runner=runner)(
                opts, on_dask, max(1, shards_in_flight), progress
            )
        lease.check()
        summary = finish_manifest(opts)
    summary.not_scans = not_scans
    summary.report_url = write_run_report(opts, report_sample, report_link_seconds)
    publish_summary(summary)
    get_run_logger().info("run %s finished: %s", summary.run_id, summary.counts)
    return summary


__all__ = ["RunSummary", "StorageError", "colorize_archive"]
