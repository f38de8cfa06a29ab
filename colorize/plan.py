"""Planning a run: list the source, decide per file what to do, and cut the work into shards.

Everything here is a stream: a source of millions of files is never held as a list. What is held
is the ledger (a hash map, one entry per source ever seen) and the set of output keys of this run
(to refuse two sources that would write the same output).
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from colorize.color import COLOUR_METHOD
from colorize.imaging import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    OUTPUT_FORMATS,
    SCAN_EXTENSIONS,
    image_extensions,
    output_format,
    output_key,
)
from colorize.manifest import (
    DONE_STATUSES,
    LEDGER_KEY,
    Ledger,
    LedgerEntry,
    ManifestRow,
    done_reason,
    format_mtime,
    new_run_id,
)
from colorize.storage import (
    NoSuchFolderError,
    ObjectInfo,
    Storage,
    UnsafeKeyError,
    check_key,
    is_hidden,
    legible,
    nested_prefix,
    unrecordable,
)
from colorize.storage.local import LocalStorage

_EXTENSION_FORMAT = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WEBP", ".bmp": "BMP", ".jp2": "JPEG2000",
}  # fmt: skip
assert set(_EXTENSION_FORMAT) == SCAN_EXTENSIONS and set(_EXTENSION_FORMAT.values()) == set(FORMATS)


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs to know, resolved once at its start and passed to every shard."""

    run_id: str
    source: str
    dest: str
    model: str  # a resolved model spec (folder, file or registry version), loadable anywhere
    model_id: str
    batch_size: int = 8
    shard_size: int = 256
    device: str = "auto"
    backend: str = "auto"  # auto: ONNX Runtime on a CPU when installed, else PyTorch
    gpu_jpeg: bool = True  # on a GPU, decode, merge and encode JPEG scans there (colorize.jpeg_lane)
    force: bool = False
    redo_older: bool = False
    colorize_color: bool = False
    output_format: str = "same"
    max_pixels: int = DEFAULT_MAX_PIXELS
    memory_budget: int | None = None  # bytes for scans in flight per process; None: a share of its RAM
    endpoint_url: str | None = None
    sign_cert: str | None = None  # C2PA signing (issue 10): certificate chain and key, paths or s3:// URIs
    sign_key: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch size and shard size must be at least 1")
        if bool(self.sign_cert) != bool(self.sign_key):
            raise ValueError("signing needs both a certificate (sign_cert) and its key (sign_key)")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ValueError("the memory budget must be positive")
        if self.max_pixels < 1:
            raise ValueError(f"the pixel limit must be positive, not {self.max_pixels}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}")


@dataclass(frozen=True)
class WorkItem:
    """One source file to colorize.

    ``verify_sha256`` is set when the ledger knows this source with a different mtime but the same
    size: the shard hashes the bytes and skips the file if its content is in fact unchanged.
    ``adopt`` is set when a file is at ``output_key`` that may not be the output the ledger
    recorded for this source: the shard keeps it if its XMP says this scan and this model made it
    (a run stopped between writing it and recording it, or a ledger lost), instead of making it
    again. ``unrecorded``: the ledger does not give that path to this source, so a file there that
    this software did not make, or made from another scan, is not to be replaced.
    """

    key: str
    size: int
    mtime: float
    etag: str | None
    output_key: str
    output_format: str
    verify_sha256: str = ""
    adopt: bool = False
    unrecorded: bool = False
    previous: LedgerEntry | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Shard:
    index: int
    items: list[WorkItem]

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"


@dataclass(frozen=True)
class SkipBatch:
    """Rows decided without touching the files (already done, refused keys): written as one part."""

    index: int
    rows: list[ManifestRow]

    @property
    def name(self) -> str:
        return f"plan-{self.index:06d}"


def extension_format(key: str) -> str | None:
    """Pillow format implied by a key's extension, or None when it is not a scan extension."""
    return _EXTENSION_FORMAT.get(os.path.splitext(key)[1].lower())


def describe_not_scans(counts: Mapping[str, int]) -> str:
    """What a run left alone, for people: "3 .gif (an image format runs do not read), 2 .txt".

    Args:
        counts: file extension (lower case, with its dot; "" for none) -> files listed with it.
    """
    images = image_extensions(counts)
    parts = [
        f"{n} {_shown(ext) or 'without extension'}" + (" (an image format runs do not read)" if ext in images else "")
        for ext, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return ", ".join(parts)


def _shown(ext: str) -> str:
    """An extension as a person should read it: quoted when it holds a space or a control character
    (``'.jpg '``: no JPEG, and not to be taken for one)."""
    return repr(ext) if ext != ext.strip() or not ext.isprintable() else ext


def _unchanged(obj: ObjectInfo, entry: LedgerEntry) -> bool | None:
    """True/False when size and ETag (S3) or mtime (local) settle it; None when only the bytes can.

    A different ETag is not a different file: a multipart upload's depends on its part size, and
    a source that moved between stores (``colorize relocate``) had another or none.
    """
    if obj.size != entry.size:
        return False
    if obj.etag and obj.etag == entry.etag:
        return True
    if not obj.etag and format_mtime(obj.mtime) == entry.mtime:
        return True
    return None if entry.sha256 else False


def _row(opts: RunOptions, source: Storage, obj: ObjectInfo, status: str, reason: str, **kw: object) -> ManifestRow:
    return ManifestRow(
        run_id=opts.run_id, source_uri=legible(source.uri_for(obj.key)), source_size=obj.size,
        source_mtime=format_mtime(obj.mtime), source_etag=obj.etag or "", status=status, reason=reason,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def done_row(opts: RunOptions, source: Storage, obj: ObjectInfo, entry: LedgerEntry, why: str) -> ManifestRow:
    """The ``skipped_done`` row of a source whose output from an earlier run stands."""
    return _row(
        opts,
        source,
        obj,
        "skipped_done",
        done_reason(why, entry.model_id),
        source_sha256=entry.sha256,
        output_uri=entry.output_uri,
        output_sha256=entry.output_sha256,
        model_id=entry.model_id,
        provenance=entry.provenance,
        model_sha256=entry.model_sha256,
        colour_method=entry.colour_method,
        output_size=entry.output_size,
    )


def _made_before_a_move(entry: LedgerEntry, dest: Storage, out_key: str) -> bool:
    """Whether the ledger's output of a source is ``out_key`` of ``dest`` moved or remounted since
    (without ``colorize relocate``): a recorded URI under another root, where the key alone decides.

    Under this destination's root only the key's own URI is its record (``plan`` compares them): a
    folder of the archive run on its own into the same destination has outputs whose keys end as
    another's do (``sub/a.jpg`` and ``a.jpg``).
    """
    if entry.output_uri.startswith(dest.uri.rstrip("/") + "/"):
        return False
    return entry.output_uri == out_key or entry.output_uri.endswith("/" + out_key)


_RENAME = "use --output-format same, or rename one of them"


def _clash_with_owner(ledger: Ledger, source: Storage, dest: Storage, uri: str, out_key: str) -> str:
    """Why ``out_key`` may not be written for the source ``uri``: it is, by the ledger, another's output.

    Another source of this one's (a forced format makes ``a.jpg`` and ``a.tif`` meet), or of another
    source folder written to the same destination. A folder of the same name under another root is
    most likely this archive before it moved: the reason names the command that says so. "" when free.
    """
    owner = ledger.owner(dest.uri_for(out_key))
    if owner is None or owner == uri:
        return ""
    root = source.uri.rstrip("/") + "/"
    if owner.startswith(root):
        owner_key = owner[len(root) :]
        if posixpath.dirname(owner_key) != posixpath.dirname(out_key):  # a format never moves an output
            return (
                f"is already the output of {owner_key}, written there by a run of its folder into this "
                f"destination; give that folder's runs their own destination"
            )
        return f"is already the output of {owner_key}; rename one of them"
    key = uri[len(root) :]
    if owner.endswith("/" + key):
        old_root = owner[: -len(key) - 1]
        if root.startswith(old_root + "/"):
            return (
                f"is already the output of {owner}, a scan of {old_root}, which holds {source.uri}; "
                "give this source its own destination"
            )
        return (
            f"is already the output of {owner}: if the scans under {old_root} moved to {source.uri}, run "
            f"`colorize relocate {dest.uri} {old_root} {source.uri}` once and run again (what was done there is "
            "skipped); otherwise give this source its own destination"
        )
    return f"is already the output of {owner}; give this source its own destination"


def plan(
    opts: RunOptions,
    source: Storage,
    dest: Storage,
    ledger: Ledger,
    skip_batch_size: int = 10_000,
    not_scans: Counter[str] | None = None,
) -> Iterator[Shard | SkipBatch]:
    """Decide what to do with every scan under the source, as a stream of shards and skip batches.

    Every listed scan ends up in exactly one shard or one skip batch. Files without a scan
    extension get no row (an archive's sidecars would swamp the manifest); ``not_scans``, when
    given, counts them by extension, so that a run can say what it left alone.
    """
    outputs_seen: dict[str, str] = {}
    existing: dict[str, int] | None = None

    def outputs_there() -> dict[str, int]:
        """The destination's keys and their sizes, listed once, when first asked for."""
        nonlocal existing
        if existing is None:
            try:
                existing = {o.key: o.size for o in dest.list()}
            except NoSuchFolderError:  # a first run's, before anything is written there
                existing = {}
        return existing

    nested = nested_prefix(source.uri, dest.uri)
    pending: list[WorkItem] = []
    skipped: list[ManifestRow] = []
    n_shards = n_skips = 0

    for obj in source.list():
        if nested and obj.key.startswith(nested):
            continue  # the destination inside the source: never take our outputs for scans
        if is_hidden(obj.key):
            continue  # S3 lists them; a local listing never shows them
        fmt = extension_format(obj.key)
        if obj.problem:  # a folder the listing could not enter, or a file it cannot reach
            if not obj.key or obj.key.endswith("/") or fmt is not None:  # "": the source's own S3 marker
                skipped.append(_row(opts, source, obj, "failed", f"not read: {obj.problem}"))
            continue
        if fmt is None:
            if not_scans is not None:
                not_scans[os.path.splitext(obj.key)[1].lower()] += 1
            continue
        try:
            check_key(obj.key)
        except UnsafeKeyError as err:
            skipped.append(_row(opts, source, obj, "failed", f"refused: {err}; nothing written"))
            continue
        if (problem := unrecordable(obj.key)) is not None:
            skipped.append(_row(opts, source, obj, "failed", f"refused: {problem}; nothing written"))
            continue
        out_fmt = output_format(fmt, opts.output_format)
        out_key = output_key(obj.key, fmt, out_fmt)
        uri = source.uri_for(obj.key)
        entry = None if opts.force else ledger.get(uri)
        # An output is one source's: one whose output, by the ledger, this already is keeps it (a
        # forced format can make two sources of a folder meet, and two folders can share a
        # destination), and so does the first of this run's to claim it.
        clash = ""
        exact = entry is not None and entry.output_uri == dest.uri_for(out_key)
        recorded = exact or (entry is not None and _made_before_a_move(entry, dest, out_key))
        there = outputs_there().get(out_key)
        unrecorded = there is not None and not recorded
        if unrecorded and len(ledger):
            clash = _clash_with_owner(ledger, source, dest, uri, out_key)
        if out_key.split("/", 1)[0] == LEDGER_KEY:  # a source folder named manifest.csv
            clash = f"would make {LEDGER_KEY} in the destination a folder, where the ledger must be a file; rename it"
        if not clash and out_key in outputs_seen:
            clash = f"would overwrite the output of {outputs_seen[out_key]}; {_RENAME}"
        if clash:
            reason = f"output {out_key} {clash}"
            skipped.append(_row(opts, source, obj, "failed", reason))
            continue
        if opts.output_format != "same":  # only a forced format can make two sources meet
            outputs_seen[out_key] = obj.key

        # A file at the output's path other than the one recorded (none, one recorded under a
        # destination since moved, or not of that size) may be what a run killed before recording
        # made: the shard keeps it if its XMP says so, and refuses it if its XMP names another scan.
        # One of the recorded size is taken for the recorded output, not read again (--redo-older's
        # millions of outputs would each be read once more for nothing), nor is one of a ledger
        # that recorded no sizes.
        adopt = there is not None and not opts.force
        adopt = adopt and (not exact or (entry is not None and entry.output_size not in (0, there)))
        item = WorkItem(
            obj.key, obj.size, obj.mtime, obj.etag, out_key, out_fmt, adopt=adopt, unrecorded=unrecorded, previous=entry
        )
        if entry is not None:
            unchanged = _unchanged(obj, entry)
            if entry.status in DONE_STATUSES and unchanged is not False:
                # --redo-older: made by another model, or by an older way of colouring at full resolution.
                older = entry.model_id != opts.model_id or entry.colour_method != COLOUR_METHOD
                # The output at this run's path must be the one the ledger recorded: made in
                # another format (an earlier --output-format), it is no output of this source.
                # And whole: an output cut short or emptied since (a failing disk, a hand) is made again.
                whole = there is not None and entry.output_size in (0, there)
                if whole and recorded and not (opts.redo_older and older):
                    if unchanged:
                        skipped.append(done_row(opts, source, obj, entry, "unchanged since last run"))
                        continue
                    item = replace(item, verify_sha256=entry.sha256)
            elif entry.status == "skipped_color" and unchanged and not opts.colorize_color:
                skipped.append(_row(
                    opts, source, obj, "skipped_color",
                    f"unchanged since run {entry.run_id}, which found it already in colour",
                    source_sha256=entry.sha256,
                ))  # fmt: skip
                continue
        pending.append(item)

        if len(pending) >= opts.shard_size:
            n_shards += 1
            yield Shard(n_shards, pending)
            pending = []
        if len(skipped) >= skip_batch_size:
            n_skips += 1
            yield SkipBatch(n_skips, skipped)
            skipped = []
    if pending:
        yield Shard(n_shards + 1, pending)
    if skipped:
        yield SkipBatch(n_skips + 1, skipped)


def new_run_options(
    source: Storage, dest: Storage, model: str | None, registry: str | None, options: Mapping[str, object]
) -> RunOptions:
    """A new run's options: a fresh run id, the destination checked against the source, and the
    model resolved and named (its weights hashed, not loaded). Nothing is written anywhere.

    Args:
        options: the rest of :class:`RunOptions` (batch_size, force, output_format, ...).
    """
    from colorize.modelfile import model_identity, resolve_model_spec  # torch: only for a run

    check_destination(source, dest)
    endpoint = options.get("endpoint_url")
    spec = resolve_model_spec(model, registry, endpoint)  # type: ignore[arg-type]
    model_id = model_identity(spec, endpoint)  # type: ignore[arg-type]
    return RunOptions(run_id=new_run_id(), source=source.uri, dest=dest.uri, model=spec, model_id=model_id, **options)  # type: ignore[arg-type]


@dataclass
class Preview:
    """What a run would do, from its plan alone: the listing and the ledger, no file read.

    ``colorize`` counts the scans a run would read: of them, ``verify`` are skipped after all if their
    content turns out unchanged (only their mtime or ETag moved), and ``adopt`` have a file at
    their output path that may not be their recorded output, kept if its XMP says this scan and
    model made it.
    ``decided`` counts the rows the plan settles unread, by status.
    """

    colorize: int = 0
    verify: int = 0
    adopt: int = 0
    decided: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source URI, reason), the first few
    not_scans: Counter[str] = field(default_factory=Counter)


def preview(opts: RunOptions, source: Storage, dest: Storage, ledger: Ledger, failures: int = 3) -> Preview:
    """Plan a run to the end and count what it would do; nothing is read but the listings, nothing written."""
    out = Preview()
    for unit in plan(opts, source, dest, ledger, not_scans=out.not_scans):
        if isinstance(unit, Shard):
            out.colorize += len(unit.items)
            out.verify += sum(1 for item in unit.items if item.verify_sha256)
            out.adopt += sum(1 for item in unit.items if item.adopt)
            continue
        out.decided.update(row.status for row in unit.rows)
        room = failures - len(out.failures)
        out.failures += [(r.source_uri, r.reason) for r in unit.rows if r.status == "failed"][: max(0, room)]
    return out


def check_destination(source: Storage, dest: Storage) -> None:
    """Refuse a destination that is the source or contains it: outputs could overwrite scans; and a
    local one that is a file or cannot be written, before anything is read.

    A destination inside the source is fine: the listing leaves it out.
    """
    _check_local_folder(dest)
    src, dst = source.uri.rstrip("/") + "/", dest.uri.rstrip("/") + "/"
    if src == dst:
        raise ValueError(f"the destination {dest.uri} is the source: outputs would overwrite the scans")
    if src.startswith(dst):
        raise ValueError(
            f"the destination {dest.uri} contains the source {source.uri}: an output could overwrite a scan; "
            "choose a destination outside the source"
        )


def _check_local_folder(dest: Storage) -> None:
    """A local destination must be a folder this user may write in, or one that can be made."""
    if not isinstance(dest, LocalStorage):
        return
    root = dest.root
    if root.exists() and not root.is_dir():
        raise ValueError(f"the destination {root} is a file, not a folder")
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"the destination {root} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "" if existing == root else f" (it would be made inside {existing})"
        raise ValueError(f"the destination {root} cannot be written by this user{made}: permission denied")
