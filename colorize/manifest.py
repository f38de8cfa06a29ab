"""The manifest: one CSV row per source per run, and the cumulative ledger built from them.

At the destination::

    manifest.csv                 the ledger: the latest state of every source ever seen
    manifests/<run_id>.csv       everything one run did, one row per listed source
    manifests/<run_id>/*.csv     parts, written as a run goes; folded into the two files above
                                 when the run ends, or by the next run if this one was killed

The ledger keeps the latest row of every source, so it stays one row per source however many
nights run; a ``skipped_done`` row carries its output's URI, hash and model forward.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime

import pandas as pd

from colorize.host import HOST
from colorize.storage import Storage, StorageError

LEDGER_KEY = "manifest.csv"
RUNS_PREFIX = "manifests/"

STATUSES = ("colorized", "skipped_done", "skipped_color", "failed")


@dataclass
class ManifestRow:
    """One source in one run. Empty strings and zeros mean "not known" (e.g. undecodable files)."""

    run_id: str
    source_uri: str
    source_size: int
    source_mtime: str
    status: str
    reason: str = ""
    source_etag: str = ""
    source_sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    bit_depth: int = 0
    pages: int = 0
    output_uri: str = ""
    output_sha256: str = ""
    model_id: str = ""
    seconds: float = 0.0
    worker: str = ""
    finished_at: str = ""
    provenance: str = "none"  # what the output carries: xmp, xmp+c2pa, none (BMP; rows without output)
    model_sha256: str = ""  # the full sha256 of the model's weights (model_id has its first 12 hex)
    colour_method: str = ""  # how the output got its full-resolution colour (color.COLOUR_METHOD)
    output_size: int = 0  # the output's bytes: one changed since (cut short, emptied) is made again

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        self.seconds = round(float(self.seconds), 4)
        if not self.worker:
            self.worker = worker_id()
        if not self.finished_at:
            self.finished_at = now_iso()


COLUMNS: list[str] = [
    "run_id", "source_uri", "source_size", "source_mtime", "source_etag", "source_sha256",
    "width", "height", "mode", "bit_depth", "pages", "status", "reason", "output_uri",
    "output_sha256", "model_id", "seconds", "worker", "finished_at",
    "provenance", "model_sha256",  # appended (issue 10): older manifests lack them and read as ""
    "colour_method",  # appended later still, and read as "" from older manifests
    "output_size",  # and later: 0 in older manifests, which then check no size
]  # fmt: skip
assert sorted(COLUMNS) == sorted(f.name for f in fields(ManifestRow))

_DTYPES = {
    "source_size": "int64", "width": "int64", "height": "int64", "bit_depth": "int64",
    "pages": "int64", "seconds": "float64", "output_size": "int64",
}  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def format_mtime(seconds: float) -> str:
    """A modification time as recorded (and compared) in manifests: ISO 8601 UTC, microseconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def worker_id() -> str:
    """Which process did the work: ``host:pid``."""
    return f"{HOST}:{os.getpid()}"


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second, then 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def to_frame(rows: Iterable[ManifestRow]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)
    return frame.astype(_DTYPES) if len(frame) else empty_frame()


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "object")) for c in COLUMNS})


def read_csv(storage: Storage, key: str) -> pd.DataFrame:
    """A manifest CSV as a frame with every column, or an empty frame when there is none."""
    try:
        data = storage.read_bytes(key)
    except FileNotFoundError:
        return empty_frame()
    where = storage.uri_for(key)
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:  # Empty: 0 bytes
        raise ManifestError(f"{where} cannot be read as a manifest: {err}; {_RESTORE}") from None
    # Columns added since a manifest was written are filled in empty; these it always had.
    if missing := [c for c in ("run_id", "source_uri", "status") if c not in frame]:
        header = ",".join(map(str, frame.columns))[:120]
        raise ManifestError(
            f"{where} is not a manifest this tool wrote: it has no {', '.join(missing)} column (its header: "
            f"{header!r}; re-saved by a spreadsheet with another separator?); {_RESTORE}"
        )
    if len(bad := frame[~frame["status"].isin(STATUSES)]):
        row = int(bad.index[0]) + 2  # the header is line 1
        raise ManifestError(
            f"{where} is damaged: line {row} has the status {bad['status'].iloc[0]!r}, not one of "
            f"{', '.join(STATUSES)} (cut short, or edited by hand?); {_RESTORE}"
        )
    for column in COLUMNS:
        if column not in frame:
            frame[column] = ""
    for column, dtype in _DTYPES.items():
        try:
            frame[column] = pd.to_numeric(frame[column].replace("", "0")).astype(dtype)
        except ValueError as err:
            raise ManifestError(f"{where} is damaged: its {column} column holds {err}; {_RESTORE}") from None
    return frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]


class ManifestError(StorageError):
    """A manifest that cannot be read as one: the run stops rather than rewrite it, losing its history."""


_RESTORE = (
    "the run stops rather than rewrite it; restore it from a backup, or move it away (a run without "
    "a ledger takes each output it finds whole, by its metadata, as done)"
)


def write_csv(storage: Storage, key: str, frame: pd.DataFrame) -> None:
    """Write a manifest CSV atomically (the storage writes whole objects only).

    Lines end in CRLF (RFC 4180), so that a field holding a lone CR, which an S3 key may, is quoted:
    with LF endings the CSV writer leaves it bare, and every reader takes it for a line break.
    """
    storage.write_bytes(key, frame.to_csv(index=False, lineterminator="\r\n").encode("utf-8"), "text/csv")


@dataclass(frozen=True, slots=True)  # slots: a ledger of millions of entries
class LedgerEntry:
    """What the ledger remembers of a source: enough to decide whether to skip it."""

    size: int
    mtime: str
    etag: str
    sha256: str
    status: str
    output_uri: str
    output_sha256: str
    model_id: str
    run_id: str
    provenance: str = ""
    model_sha256: str = ""
    colour_method: str = ""
    output_size: int = 0  # 0: not recorded (rows from before it was)


class Ledger:
    """The cumulative manifest as a hash map from source URI to its latest state."""

    def __init__(self, frame: pd.DataFrame):
        self._entries: dict[str, LedgerEntry] = {
            uri: LedgerEntry(
                int(size), mtime, etag, sha, status, out, out_sha, model, run, prov, model_sha, method, int(out_size)
            )
            for uri, size, mtime, etag, sha, status, out, out_sha, model, run, prov, model_sha, method, out_size in zip(
                frame["source_uri"], frame["source_size"], frame["source_mtime"], frame["source_etag"],
                frame["source_sha256"], frame["status"], frame["output_uri"], frame["output_sha256"],
                frame["model_id"], frame["run_id"], frame["provenance"], frame["model_sha256"],
                frame["colour_method"], frame["output_size"], strict=True,
            )
        }  # fmt: skip

        self._owners: dict[str, str] | None = None

    @classmethod
    def load(cls, dest: Storage) -> Ledger:
        return cls(read_csv(dest, LEDGER_KEY))

    def get(self, source_uri: str) -> LedgerEntry | None:
        return self._entries.get(source_uri)

    def owner(self, output_uri: str) -> str | None:
        """The source whose output, by the ledger, ``output_uri`` is; None when it is no source's.

        Built on first use (one map of a million entries costs ~100 MB; a first run never needs it).
        Should two sources' rows name one output (an older version let a second source overwrite
        it), the one the latest run made or kept owns it.
        """
        if self._owners is None:
            latest: dict[str, tuple[str, str]] = {}
            for uri, entry in self._entries.items():
                if entry.status in DONE_STATUSES and entry.output_uri:
                    held = latest.get(entry.output_uri)
                    if held is None or entry.run_id > held[0]:
                        latest[entry.output_uri] = (entry.run_id, uri)
            self._owners = {out: uri for out, (_, uri) in latest.items()}
        return self._owners.get(output_uri)

    def __len__(self) -> int:
        return len(self._entries)


DONE_STATUSES = ("colorized", "skipped_done")


# What a row says of the scan itself, which a run that skips it never decodes to see.
_DESCRIPTION = ["width", "height", "mode", "bit_depth", "pages"]


def carry_forward(run: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """A run's rows with each skipped source described as the ledger knows it.

    A source skipped unread (``skipped_done``, ``skipped_color``) gets its width, height, mode, bit
    depth and pages from the row before, and a ``skipped_done`` one also the note of what of the
    scan its output lacks (the pages after the first, metadata the format could not hold), so
    the ledger does not forget either when nothing changes.
    """
    unread = run["status"].isin(["skipped_done", "skipped_color"]) & (run["width"] == 0) & (run["mode"] == "")
    if not unread.any() or not len(ledger):
        return run
    before = ledger.drop_duplicates("source_uri", keep="last").set_index("source_uri")
    uris = run.loc[unread, "source_uri"]
    known = uris[uris.isin(before.index)]
    if known.empty:
        return run
    prev = before.loc[known.to_numpy()]
    run = run.copy()
    for column in _DESCRIPTION:
        run.loc[known.index, column] = prev[column].to_numpy()
    notes = [
        _note(status, reason, model) if now == "skipped_done" else ""
        for status, reason, model, now in zip(
            prev["status"], prev["reason"], prev["model_id"], run.loc[known.index, "status"], strict=True
        )
    ]
    run.loc[known.index, "reason"] = [
        f"{reason}; {note}" if note and not reason.endswith(note) else reason
        for reason, note in zip(run.loc[known.index, "reason"], notes, strict=True)
    ]
    return run


def done_reason(why: str, model_id: str, notes: Iterable[str] = ()) -> str:
    """A ``skipped_done`` row's reason: ``<why>; output already made by <model>[; <note>...]``.

    :func:`carry_forward` reads the notes back from it, to keep them when nothing changes.
    """
    return "; ".join(part for part in (why, f"{_MADE_BY}{model_id}", *notes) if part)


_MADE_BY = "output already made by "


def _note(status: str, reason: str, model_id: str) -> str:
    """The note on a done source's row: a colorized row's reason, or what a skipped row carried on."""
    if status == "colorized":
        return reason
    if status == "skipped_done":  # as done_reason words it
        return reason.partition(f"{_MADE_BY}{model_id}")[2].removeprefix("; ")
    return ""


def merge_into_ledger(ledger: pd.DataFrame, run: pd.DataFrame) -> pd.DataFrame:
    """The ledger after a run: each source's latest row."""
    merged = pd.concat([ledger, run], ignore_index=True) if len(ledger) else run
    merged = merged.drop_duplicates(subset="source_uri", keep="last")
    return merged.sort_values("source_uri", kind="stable").reset_index(drop=True)


def part_key(run_id: str, name: str) -> str:
    return f"{RUNS_PREFIX}{run_id}/{name}.csv"


def run_key(run_id: str) -> str:
    return f"{RUNS_PREFIX}{run_id}.csv"


def write_part(dest: Storage, run_id: str, name: str, rows: list[ManifestRow]) -> None:
    """Record finished work as soon as it is done, so that a kill loses at most the work in flight."""
    write_csv(dest, part_key(run_id, name), to_frame(rows))


def _part_keys(dest: Storage, run_id: str) -> list[str]:
    return sorted(o.key for o in dest.list(f"{RUNS_PREFIX}{run_id}/") if _PART.fullmatch(o.key[len(RUNS_PREFIX) :]))


# A run's parts: manifests/<run id>/<shard-NNNNNN or plan-NNNNNN>.csv. Nothing else under
# manifests/ is a run's (a source folder named "manifests" puts its outputs there too).
_PART = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}/(shard|plan)-\d{6}\.csv")


def unfinished_runs(dest: Storage, exclude: str = "") -> Iterator[str]:
    """Runs that left parts behind without a run manifest: killed, or crashed before the end."""
    seen: set[str] = set()
    for obj in dest.list(RUNS_PREFIX):
        rest = obj.key[len(RUNS_PREFIX) :]
        parts = rest.split("/")
        if _PART.fullmatch(rest) and parts[0] != exclude and parts[0] not in seen:
            seen.add(parts[0])
            yield parts[0]


_FOLDER_REASONS = ("not read: cannot list this folder", "not read: a link to the folder")


def _folder_rows(ledger: pd.DataFrame) -> pd.Series:
    """A folder's row: its URI ends in "/", or, written before it did, its reason says it is one."""
    return ledger["source_uri"].str.endswith("/") | ledger["reason"].str.startswith(_FOLDER_REASONS)


def finish_run(dest: Storage, run_id: str, listed: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold a run's parts into ``manifests/<run_id>.csv`` and the ledger; remove the parts.

    Returns the run's rows, and the ledger's rows of files under ``listed`` that it did not find
    (:func:`vanished`; none when nothing was ``listed``).

    ``listed``: the source a run listed whole, when it did (not a killed run's). The ledger's rows
    of folders under it that an earlier listing could not enter (URIs ending in ``/``), and that this
    one did not report, leave the ledger: their files have rows of their own now.

    Order matters for crash safety: the run manifest and the ledger are written (atomically)
    before any part is deleted, so a crash in between at worst folds the same rows twice, which
    the ledger's one-row-per-source rule makes harmless.
    """
    keys = _part_keys(dest, run_id)
    before = read_csv(dest, LEDGER_KEY)
    run, ledger = fold_run(dest, run_id, before, keys, listed)
    write_csv(dest, run_key(run_id), run)
    write_csv(dest, LEDGER_KEY, ledger)
    for key in keys:
        dest.delete(key)
    return run, (vanished(before, run, listed) if listed else before.iloc[:0])


def fold_run(
    dest: Storage, run_id: str, ledger: pd.DataFrame, keys: list[str] | None = None, listed: str = ""
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's rows (its parts, ``keys``, and a manifest folded before) and ``ledger`` with them merged.

    Reads only: :func:`finish_run` writes what this returns; a dry run looks at it.
    """
    keys = _part_keys(dest, run_id) if keys is None else keys
    frames = [read_csv(dest, k) for k in keys]
    previous = read_csv(dest, run_key(run_id))  # a run folded before, whose parts outlived it
    run = pd.concat([previous, *frames], ignore_index=True) if frames else previous
    run = run.drop_duplicates(subset="source_uri", keep="last").reset_index(drop=True)
    if listed:
        under, uris = listed.rstrip("/") + "/", ledger["source_uri"]
        folder = _folder_rows(ledger)
        reported = set(run["source_uri"])
        gone = ~uris.isin(reported) & ~(uris + "/").isin(reported)
        ledger = ledger[~(folder & uris.str.startswith(under) & gone & (ledger["status"] == "failed"))]
    run = carry_forward(run, ledger)
    return run, merge_into_ledger(ledger, run)


def vanished(ledger: pd.DataFrame, run: pd.DataFrame, listed: str) -> pd.DataFrame:
    """The ledger's rows of files under ``listed`` that a run which listed it whole did not find.

    Deleted, renamed or moved since the run that last saw them (their ``run_id``), latest first.
    Their rows and outputs stay; this only says so. A folder the listing could not enter this time
    (its row's reason says so) hides its files, which are not counted as gone; an S3 key ending in
    "/" that holds bytes is an object refused, and hides nothing.
    """
    under, uris = listed.rstrip("/") + "/", ledger["source_uri"]
    blind = tuple(run.loc[run["reason"].str.startswith(_FOLDER_REASONS), "source_uri"])
    gone = uris.str.startswith(under) & ~_folder_rows(ledger) & ~uris.isin(run["source_uri"])
    if blind:
        gone &= ~uris.str.startswith(blind)
    return ledger[gone].sort_values(["run_id", "source_uri"], ascending=[False, True], kind="stable")


def relocate(ledger: pd.DataFrame, old: str, new: str) -> tuple[pd.DataFrame, int]:
    """The ledger with every URI under ``old`` (sources and outputs alike) put under ``new``.

    For an archive, or a destination, that moved: remounted, copied to another bucket. Where a
    moved source meets a row already recorded at its new URI (a run there before the move was
    recorded), the row that says it is done wins, then the later run's: the next run checks the
    file against it either way. Returns the ledger and how many of its rows changed.

    Args:
        old, new: root URIs, as a storage spells them (``/mnt/a/scans``, ``s3://bucket/prefix``),
            neither inside the other.
    """
    old_root, new_root = old.rstrip("/") + "/", new.rstrip("/") + "/"
    if old_root.startswith(new_root) or new_root.startswith(old_root):
        raise ValueError(f"{old} and {new} are one inside the other: which rows moved cannot be told apart")
    frame = ledger.copy()
    changed = pd.Series(False, index=frame.index)
    for column in ("source_uri", "output_uri"):
        under = frame[column].str.startswith(old_root)
        frame.loc[under, column] = new_root + frame.loc[under, column].str.slice(len(old_root))
        changed |= under
    done = frame["status"].isin(DONE_STATUSES)
    order = frame.assign(_done=done).sort_values(["_done", "run_id"], kind="stable").index
    frame = frame.loc[order].drop_duplicates("source_uri", keep="last")
    return frame.sort_values("source_uri", kind="stable").reset_index(drop=True), int(changed.sum())
