"""Telling a destination's ledger that files it knows moved: an archive remounted, copied to
another bucket, or the destination itself moved.

The ledger knows a source by its full URI, so without this a moved archive is, to the next run,
millions of new scans whose outputs belong to sources it no longer lists; the run refuses them
(``plan``), naming this command.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd

from colorize.lease import DestinationLease
from colorize.manifest import (
    LEDGER_KEY,
    finish_run,
    fold_run,
    new_run_id,
    read_csv,
    relocate,
    unfinished_runs,
    write_csv,
)
from colorize.storage import Storage

# How many moved files are looked for at their new place before a relocation is believed.
_SAMPLE = 20


@dataclass(frozen=True)
class Relocation:
    old: str
    new: str
    rows: int  # ledger rows whose source or output URI moved
    ledger_rows: int  # rows in the ledger afterwards (fewer when moved rows met rows already there)
    written: bool  # False for a dry run


def relocate_ledger(dest: Storage, old: str, new: Storage, dry_run: bool = False) -> Relocation:
    """Move the URIs under ``old`` in ``dest``'s ledger to ``new``'s, under the destination's lease.

    Runs killed before they finished their manifest are folded in first, so that none of their
    rows comes back under the old URIs afterwards. Raises ValueError when no row is under ``old``,
    or when none of the moved files looked for is at its new place (a mistyped root).
    """
    if dry_run:  # no lease taken, nothing folded on disk: a killed run's parts are looked at in memory
        ledger = read_csv(dest, LEDGER_KEY)
        for orphan in unfinished_runs(dest):
            ledger = fold_run(dest, orphan, ledger)[1]
        return _relocated(dest, ledger, old, new, write=False)
    with DestinationLease(dest, f"relocate-{new_run_id()}", why="a run there would read the ledger being moved"):
        for orphan in unfinished_runs(dest):
            finish_run(dest, orphan)
        return _relocated(dest, read_csv(dest, LEDGER_KEY), old, new, write=True)


def _relocated(dest: Storage, ledger: pd.DataFrame, old: str, new: Storage, write: bool) -> Relocation:
    moved, rows = relocate(ledger, old, new.uri)
    if rows == 0:
        raise ValueError(f"no file in the ledger of {dest.uri} is under {old}: nothing to move")
    old_root = old.rstrip("/") + "/"
    wanted = itertools.islice(
        (uri[len(old_root) :] for column in ("source_uri", "output_uri") for uri in ledger[column]
         if uri.startswith(old_root) and uri != old_root),  # the root itself: an S3 marker's row
        _SAMPLE,
    )  # fmt: skip
    if not any(new.stat(key) is not None for key in wanted):
        raise ValueError(
            f"none of the first files of the ledger under {old} is under {new.uri}: "
            f"is {new.uri} where they went? Nothing changed"
        )
    if write:
        write_csv(dest, LEDGER_KEY, moved)
    return Relocation(old, new.uri, rows, len(moved), write)
