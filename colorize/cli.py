"""The ``colorize`` command.

The commands that run flows import them (and so Prefect) only when called; the rest of the
library never imports Prefect.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from colorize.imaging import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from colorize.server_orphans import stop_orphaned_prefect_servers

if TYPE_CHECKING:
    import click

# A flag's metavar: Typer 0.29 otherwise shows "<bool>" beside it, as if it took a value.
_FLAG = ""


class _NoHelpMetavar:
    """--help, which Typer does not let a command declare, shown as the flag it is."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = _FLAG
        return option


class _Command(_NoHelpMetavar, TyperCommand):
    pass


class _Group(_NoHelpMetavar, TyperGroup):
    pass


app = typer.Typer(
    cls=_Group, add_completion=False, no_args_is_help=True, help="Colorize scanned black-and-white photographs."
)
models_app = typer.Typer(cls=_Group, no_args_is_help=True, help="List, inspect and promote registered models.")
app.add_typer(models_app, name="models")


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Backend(StrEnum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


OutputFormat = StrEnum("OutputFormat", {name: name for name in OUTPUT_FORMATS})  # type: ignore[misc]

_Endpoint = Annotated[str | None, typer.Option(help="S3-compatible endpoint (else AWS_ENDPOINT_URL).")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command(cls=_Command)
def run(
    source: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix of scans.")],
    dest: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix for the colour versions.")],
    model: Annotated[str | None, typer.Option(help="Model folder, .safetensors, notebook .pth, or registry.")] = None,
    registry: Annotated[str | None, typer.Option(help="Use this registry's production model.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per task (unit of work and of retry).")] = 256,
    device: Annotated[Device, typer.Option(help="auto uses a GPU when there is one.")] = Device.auto,
    backend: Annotated[
        Backend, typer.Option(help="auto: ONNX Runtime on a CPU (when installed), PyTorch on a GPU.")
    ] = Backend.auto,
    force: Annotated[bool, typer.Option("--force", metavar=_FLAG, help="Redo everything, even what is done.")] = False,
    redo_older: Annotated[
        bool,
        typer.Option(
            "--redo-older",
            metavar=_FLAG,
            help="Redo outputs made by another (older) model, or an older way of colouring.",
        ),
    ] = False,
    colorize_color: Annotated[
        bool, typer.Option("--colorize-color", metavar=_FLAG, help="Colorize colour sources too, as gray.")
    ] = False,
    output_format: Annotated[OutputFormat, typer.Option(help="same keeps each source's format.")] = OutputFormat.same,
    max_megapixels: Annotated[float, typer.Option(min=0.001, help="Refuse larger images before decoding.")] = (
        DEFAULT_MAX_PIXELS / 1e6
    ),
    memory_gb: Annotated[
        float | None,
        typer.Option(min=0.001, help="Memory for scans in flight, per process (default: a quarter of RAM, shared)."),
    ] = None,
    endpoint_url: _Endpoint = None,
    sign_with: Annotated[
        tuple[str, str] | None,
        typer.Option(metavar="CERT KEY", help="Sign a C2PA manifest into each output: PEM chain and key (path/s3)."),
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Run shards on this Dask scheduler (tcp://host:8786).")
    ] = None,
    dask_local: Annotated[int, typer.Option(min=0, help="Run shards on a local Dask cluster of N processes.")] = 0,
    gpu_jpeg: Annotated[
        bool, typer.Option(metavar=_FLAG, help="On a GPU, decode, merge and encode JPEG scans there (nvJPEG).")
    ] = True,
    gpu_slot: Annotated[
        str | None, typer.Option(help="Hold this Prefect global concurrency limit while using the GPU.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", metavar=_FLAG, help="Say what the run would do, from the listing and the ledger; do nothing."
        ),
    ] = False,
) -> None:
    """Colorize every gray scan under SOURCE into DEST, and record it in DEST/manifest.csv.

    Exit code 0 when the run completed (some files may have failed: the manifest says which),
    non-zero when the run itself could not proceed.
    """
    from colorize.modelfile import ModelNotFoundError
    from colorize.plan import describe_not_scans
    from colorize.storage import StorageError

    if dask_address and dask_local > 0:  # as the flow refuses it, but now, and in a dry run too
        raise _fail("give --dask-local or --dask-address, not both: one starts a cluster, the other uses one", 1)
    if dry_run:
        _check_device(device.value, dask_address)
        options = dict(
            force=force, redo_older=redo_older, colorize_color=colorize_color, output_format=output_format.value,
            max_pixels=int(max_megapixels * 1e6), endpoint_url=endpoint_url,
        )  # fmt: skip
        try:
            _dry_run(source, dest, model, registry, options)
        except BrokenPipeError:  # read by `head`, which had what it wanted
            raise _reader_gone() from None
        except (ModelNotFoundError, StorageError, OSError, ValueError) as err:
            raise _fail(str(err), 1) from None
        return

    from flows.colorize_archive import colorize_archive

    try:  # what can be told without the Prefect server, before the half minute it takes to start
        _check_folders(source, dest, endpoint_url)
        _check_device(device.value, dask_address)
        _check_model(model, registry, endpoint_url)
        if dask_address or dask_local > 0:
            from flows.runners import require_dask

            require_dask()
    except (ModelNotFoundError, StorageError, OSError, ValueError, RuntimeError) as err:
        raise _fail(str(err), 1) from None
    stop_orphaned_prefect_servers()
    try:
        summary = colorize_archive(
            source=source, dest=dest, model=model, registry=registry, batch_size=batch_size,
            shard_size=shard_size, device=device.value, backend=backend.value, force=force, redo_older=redo_older,
            colorize_color=colorize_color, output_format=output_format.value,
            max_megapixels=max_megapixels, memory_gb=memory_gb, endpoint_url=endpoint_url, progress=True,
            dask_address=dask_address, dask_local=dask_local, gpu_jpeg=gpu_jpeg, gpu_slot=gpu_slot,
            sign_cert=sign_with[0] if sign_with else None, sign_key=sign_with[1] if sign_with else None,
        )  # fmt: skip
    except (
        ModelNotFoundError,
        StorageError,
        OSError,
        ValueError,
        RuntimeError,
    ) as err:  # OSError: e.g. Dask unreachable
        raise _fail(str(err), 1) from None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "no scans found"
    typer.echo(f"run {summary.run_id}: {counts}")
    _echo_failures(summary.failures, summary.counts.get("failed", 0), "the manifest has every reason")
    if summary.not_scans:
        typer.echo(f"left alone, not scans by their extension: {describe_not_scans(summary.not_scans)}")
    if summary.gone:
        from colorize.storage import printable
        from flows.colorize_archive import gone_line

        more = f" (and {summary.gone - 3} more)" if summary.gone > 3 else ""
        typer.echo(f"{gone_line(summary)}: {', '.join(printable(u) for u in summary.gone_first[:3])}{more}")
    typer.echo(f"manifest: {summary.dest.rstrip('/')}/manifests/{summary.run_id}.csv")
    if summary.report_url:  # before/after pages to look at; for S3 a presigned link
        typer.echo(f"report: {summary.report_url}")


def _echo_failures(failures: list[tuple[str, str]], total: int, where: str, shown: int = 3) -> None:
    """The first few failures with their reasons (one may be to act on: a moved archive's, say), and
    how many more there are."""
    from colorize.storage import printable

    for uri, reason in failures[:shown]:
        typer.echo(f"failed: {printable(uri)}: {printable(reason)}")
    if total > shown:
        typer.echo(f"... and {total - shown} more failed ({where})")


def _reader_gone() -> typer.Exit:
    """Leave quietly, as a tool killed by SIGPIPE would (141), when stdout's reader has gone.

    Python ignores SIGPIPE, so the write raised instead; stdout goes to /dev/null so that the flush
    at exit does not raise again.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return typer.Exit(128 + signal.SIGPIPE)


def _check_device(device: str, dask_address: str | None) -> None:
    """``--device cuda`` on a machine without a GPU refused at once (a remote cluster's workers may have them)."""
    if device == "cuda" and not dask_address:
        from colorize.engine import pick_device

        try:
            pick_device(device)
        except RuntimeError as err:
            raise _fail(str(err), 1) from None


def _check_model(model: str | None, registry: str | None, endpoint_url: str | None) -> None:
    """A model that is not where it was said to be refused at once: resolved and its weights read and
    hashed, as the run does again (and says there when a --model overrides a registry)."""
    from colorize.modelfile import model_identity, resolve_model_spec

    model_identity(resolve_model_spec(model, None if model else registry, endpoint_url), endpoint_url)


def _check_folders(source: str, dest: str, endpoint_url: str | None) -> None:
    """A local source that is no folder, and a destination that cannot take the outputs, refused at once."""
    from colorize.plan import check_destination
    from colorize.storage import open_storage
    from colorize.storage.local import LocalStorage

    src, dst = open_storage(source, endpoint_url), open_storage(dest, endpoint_url)
    if isinstance(src, LocalStorage):
        src.require_folder()
    check_destination(src, dst)


def _dry_run(source: str, dest: str, model: str | None, registry: str | None, options: dict[str, object]) -> None:
    """Print what a run would do (``colorize run --dry-run``): no Prefect, no lease, nothing written."""
    from colorize.manifest import Ledger
    from colorize.plan import describe_not_scans, new_run_options, preview
    from colorize.storage import open_storage

    endpoint = options.get("endpoint_url")
    src, dst = open_storage(source, endpoint), open_storage(dest, endpoint)  # type: ignore[arg-type]
    opts = new_run_options(src, dst, model, registry, options)
    seen = preview(opts, src, dst, Ledger.load(dst))
    typer.echo(f"dry run, nothing written: {src.uri} -> {dst.uri} with model {opts.model_id}")
    kept = [
        f"{seen.verify} skipped after all if their content is unchanged" if seen.verify else "",
        f"{seen.adopt} kept if the output already at their path is theirs" if seen.adopt else "",
    ]
    notes = "; ".join(k for k in kept if k)
    typer.echo(f"would colorize {seen.colorize}" + (f" ({notes})" if notes else ""))
    for status in ("skipped_done", "skipped_color", "failed"):
        if seen.decided[status]:
            typer.echo(f"would record {status} {seen.decided[status]}")
    _echo_failures(seen.failures, seen.decided["failed"], "colorize run records every reason")
    if seen.not_scans:
        typer.echo(f"would leave alone, not scans by their extension: {describe_not_scans(seen.not_scans)}")


@app.command(cls=_Command)
def train(
    pairs: Annotated[str, typer.Argument(help="Victorian400 folder, colour-only folder, or CSV of pairs.")],
    registry: Annotated[str, typer.Option(help="Registry folder or s3:// prefix to register the model in.")],
    epochs: Annotated[int, typer.Option(min=1)] = 100,
    width: Annotated[int, typer.Option(min=1, help="Generator width (channels of the first block).")] = 64,
    depth: Annotated[int, typer.Option(min=2, help="U-Net levels (8 for 256 crops, 7 for 128).")] = 8,
    image_size: Annotated[int, typer.Option(help="Training crop side.")] = 256,
    load_size: Annotated[int, typer.Option(help="Photos are held at this side (square) to crop from.")] = 286,
    min_crop_scale: Annotated[
        float, typer.Option(help="Crops take this share of load-size or more, then are resized to image-size.")
    ] = 0.895,
    blur_probability: Annotated[
        float, typer.Option(help="Share of crops blurred whole, as out-of-focus backgrounds are (0 = off).")
    ] = 0.0,
    blur_sigma: Annotated[float, typer.Option(help="Largest blur (Gaussian sigma, pixels of a crop).")] = 8.0,
    shade_probability: Annotated[
        float, typer.Option(help="Share of crops whose gray is shaded by smooth light and shadow (0 = off).")
    ] = 0.0,
    shade: Annotated[float, typer.Option(help="Largest gain of that shading, as a share (0.2: 0.8 to 1.2).")] = 0.2,
    vflip_probability: Annotated[
        float, typer.Option(help="Share of crops turned upside down, so position cannot decide a colour (0 = off).")
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-4,
    decay_epoch: Annotated[int, typer.Option(help="Linear decay to 0 starts after this epoch.")] = 100,
    lambda_l1: Annotated[float, typer.Option(help="Weight of the L1 loss.")] = 100.0,
    lambda_smooth: Annotated[
        float, typer.Option(help="Weight of a loss on chroma that changes where the gray does not (0 = off).")
    ] = 0.0,
    rebalance: Annotated[
        float, typer.Option(help="Weight the L1 loss towards rare colours: 0 = off, 1 = Zhang et al.'s weights.")
    ] = 0.0,
    l1_warmup_epochs: Annotated[int, typer.Option(help="Epochs of L1 alone before the GAN loss.")] = 0,
    ema_decay: Annotated[float, typer.Option(help="EMA of generator weights (0 = off).")] = 0.0,
    color_mode: Annotated[str, typer.Option(help="lab (default) or rgb (the notebook's).")] = "lab",
    val_fraction: Annotated[float, typer.Option(help="Held-out share, fixed by file-name hash.")] = 0.1,
    eval_every: Annotated[int, typer.Option(min=1)] = 5,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 5,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[Device, typer.Option()] = Device.auto,
    from_model: Annotated[str | None, typer.Option(help="Fine-tune this model instead of starting afresh.")] = None,
    resume: Annotated[bool, typer.Option("--resume", metavar=_FLAG, help="Continue from the last checkpoint.")] = False,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", metavar=_FLAG, help="Register, but never promote.")
    ] = False,
    criterion: Annotated[str, typer.Option(help="psnr, ssim, ab_error or colourfulness_diff.")] = "psnr",
    checkpoint_dir: Annotated[str | None, typer.Option(help="Default: REG/checkpoints.")] = None,
    endpoint_url: _Endpoint = None,
) -> None:
    """Train a model on curated pairs, register it, and promote it if it beats production."""
    from colorize.training.trainer import TrainConfig
    from flows.retrain import retrain

    if endpoint_url:  # the training runs in this process: boto3 reads it from here for every S3 URI
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint_url
    stop_orphaned_prefect_servers()
    try:
        cfg = TrainConfig(
            color_mode=color_mode, width=width, depth=depth, image_size=image_size, load_size=load_size,
            min_crop_scale=min_crop_scale, blur_probability=blur_probability, blur_sigma=blur_sigma,
            shade_probability=shade_probability, shade=shade, vflip_probability=vflip_probability, epochs=epochs,
            batch_size=batch_size, lr=lr, decay_epoch=decay_epoch, lambda_l1=lambda_l1,
            lambda_smooth=lambda_smooth, rebalance=rebalance,
            l1_warmup_epochs=l1_warmup_epochs, ema_decay=ema_decay, val_fraction=val_fraction,
            eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed, device=device.value,
        )  # fmt: skip
        summary = retrain(
            pairs=pairs, registry=registry, config=cfg, from_model=from_model, resume=resume,
            promote=not no_promote, criterion=criterion, checkpoint_dir=checkpoint_dir, progress=True,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise _fail(str(err), 1) from None
    promoted = ", promoted to production" if summary.promoted else ""
    typer.echo(f"registered {summary.version}{promoted}: {summary.reason}")
    if summary.problems:
        typer.echo(f"{len(summary.problems)} pairs skipped (see the flow's log)")


@app.command(cls=_Command)
def report(
    dest: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix a run wrote to.")],
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")] = None,
    sample: Annotated[int, typer.Option(min=0, help="Most before/after pairs shown.")] = 120,
    endpoint_url: _Endpoint = None,
) -> None:
    """Rebuild DEST/reports/RUN_ID.html from the run's manifest and outputs, and print where it is."""
    from colorize.report import latest_run_id, write_report
    from colorize.storage import StorageError, open_storage

    try:
        storage = open_storage(dest, endpoint_url)
        run_id = run_id or latest_run_id(storage)
        key = write_report(storage, run_id, sample=sample, endpoint_url=endpoint_url) if run_id else None
    except (StorageError, FileNotFoundError, PermissionError, ValueError) as err:
        raise _fail(str(err), 1) from None
    if key is None:
        raise _fail(f"no finished run at {storage.uri} (no manifests/*.csv)", 1)
    typer.echo(storage.uri_for(key))


@app.command(cls=_Command)
def relocate(
    dest: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix whose manifest.csv to change.")],
    old: Annotated[str, typer.Argument(help="Where the files were: folder or s3://bucket/prefix.")],
    new: Annotated[str, typer.Argument(help="Where they are now.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar=_FLAG, help="Say what would change; change nothing.")
    ] = False,
    endpoint_url: _Endpoint = None,
) -> None:
    """Tell DEST's ledger that the files it knows under OLD are now under NEW.

    For scans (or a destination) that moved: remounted, renamed, copied to another bucket. Without
    it the next run refuses the scans at their new place, whose outputs the ledger gives to the old
    one. Afterwards it checks each against its row and skips what is done. Per-run manifests keep
    the URIs of their day.
    """
    from colorize.relocation import relocate_ledger
    from colorize.storage import StorageError, open_storage

    try:
        moved = relocate_ledger(
            open_storage(dest, endpoint_url), open_storage(old, endpoint_url).uri, open_storage(new, endpoint_url),
            dry_run=dry_run,
        )  # fmt: skip
    except (StorageError, OSError, ValueError) as err:
        raise _fail(str(err), 1) from None
    verb = "would move" if dry_run else "moved"
    typer.echo(f"{verb} {moved.rows} ledger rows from {moved.old} to {moved.new} ({moved.ledger_rows} rows in all)")


@app.command(cls=_Command)
def inspect(
    file: Annotated[str, typer.Argument(help="An image: path or s3:// URI.")],
    trust: Annotated[str | None, typer.Option(help="PEM root certificates to trust for C2PA (path).")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar=_FLAG, help="Print everything found, as JSON.")] = False,
    endpoint_url: _Endpoint = None,
) -> None:
    """Print what FILE says about itself: machine-coloured or not, from which scan, by which model, signed or not.

    Exit code 3 when the file's C2PA manifest does not validate (e.g. the image was changed after signing).
    """
    from pathlib import Path

    from colorize.provenance_read import describe, read_provenance
    from colorize.storage import StorageError, read_uri

    try:
        data = read_uri(file, endpoint_url)
        report = read_provenance(data, Path(trust).read_text() if trust else None)
    except (StorageError, OSError, ValueError) as err:  # missing, a folder, unreadable, ...
        raise _fail(str(err), 1) from None
    if not report["format"]:  # else "provenance: none" would read as an image that says nothing
        raise _fail(f"{file} is not an image (in no format Pillow recognises)", 1)
    typer.echo(json.dumps(report, indent=2) if as_json else "\n".join(describe(report)))
    if report["c2pa"] and report["c2pa"].get("state") == "Invalid":
        raise typer.Exit(3)


@models_app.command("list", cls=_Command)
def models_list(
    registry: Annotated[str, typer.Option(help="Registry folder or s3:// prefix.")], endpoint_url: _Endpoint = None
) -> None:
    """One line per version: name, aliases, creation time and metrics."""
    from colorize.registry import Registry

    with _registry_faults():
        reg = Registry(registry, endpoint_url=endpoint_url)
        aliases, versions = reg.aliases(), reg.versions()
    if not versions:  # a mistyped registry would otherwise look like an empty one
        raise _fail(f"no model versions in {reg.uri} (is it a registry? `colorize train ... --registry` makes one)", 1)
    damaged = 0
    for version in versions:
        tags = ",".join(a for a, v in aliases.items() if v == version)
        with _registry_faults():
            problem = reg.damage(version)
        if problem is not None:  # listed, and the rest too: the listing is where one looks for it
            damaged += 1
            typer.echo(f"{version}\t{tags or '-'}\t{problem}")
            continue
        with _registry_faults():
            card = reg.card(version)
        metrics = " ".join(
            f"{k}={v:.4g}" for k, v in sorted((card.get("metrics") or {}).items()) if isinstance(v, int | float)
        )
        typer.echo(f"{version}\t{tags or '-'}\t{card.get('created_at', '')}\t{card.get('model_id', '')}\t{metrics}")
    if damaged:
        raise _fail(f"{damaged} damaged version(s) in {reg.uri}: promote none of them", 1)


@models_app.command("show", cls=_Command)
def models_show(
    version: Annotated[str, typer.Argument(help="Version (v3) or alias (production).")] = "production",
    registry: Annotated[str, typer.Option(help="Registry folder or s3:// prefix.")] = ".",
    endpoint_url: _Endpoint = None,
) -> None:
    """Print a version's card as JSON."""
    from colorize.registry import Registry

    with _registry_faults():
        typer.echo(json.dumps(Registry(registry, endpoint_url=endpoint_url).card(version), indent=2, sort_keys=True))


@models_app.command("promote", cls=_Command)
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to promote, e.g. v3.")],
    registry: Annotated[str, typer.Option(help="Registry folder or s3:// prefix.")],
    alias: Annotated[str, typer.Option(help="Alias to point at it.")] = "production",
    endpoint_url: _Endpoint = None,
) -> None:
    """Point an alias (production by default) at a version."""
    from colorize.registry import Registry

    with _registry_faults():
        reg = Registry(registry, endpoint_url=endpoint_url)
        target = reg.resolve(version)  # "promote production --alias stable": the version production names
        reg.promote(target, alias)
    typer.echo(f"{alias} -> {target}")


@contextmanager
def _registry_faults() -> Iterator[None]:
    """A registry's faults as one line and exit 1: no such version or alias, a bucket that is not
    there, an aliases.json that is no longer JSON."""
    from colorize.storage import StorageError

    try:
        yield
    except KeyError as err:
        raise _fail(str(err.args[0]), 1) from None
    except (StorageError, ValueError) as err:
        raise _fail(str(err), 1) from None


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class _WithoutTracebacks(logging.Formatter):
    """Log lines without their tracebacks: a missing folder is one line for the person at the terminal
    (Prefect logs every failed task and flow with its traceback; `-v`, and the Prefect UI, keep them)."""

    def format(self, record: logging.LogRecord) -> str:
        # Not formatException: a handler before this one (Prefect's API log handler) may have cached
        # the traceback's text on the record.
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar=_FLAG, help="Debug logging.")] = False,
) -> None:
    console = logging.StreamHandler()
    layout = "%(levelname)s %(name)s: %(message)s"
    console.setFormatter(logging.Formatter(layout) if verbose else _WithoutTracebacks(layout))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[console])
    # SIGTERM (a scheduler's timeout, systemd, Kubernetes) ends the process without running exit
    # handlers, and one of Prefect's stops the temporary API server it started: it would be left
    # running, orphaned (as it is after a SIGKILL, which no handler sees: the next run or train
    # command stops such servers, colorize.server_orphans). Unwinding as an exit runs them
    # (Prefect's flow engine, which takes SIGTERM over during a flow run, hands it back here once
    # it has marked the run crashed).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


if __name__ == "__main__":
    app()
