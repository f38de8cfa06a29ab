"""Check that data/starter-photos/ATTRIBUTIONS.md credits every photo of MANIFEST.tsv.

Each ``dest`` of the manifest must appear in ATTRIBUTIONS.md as a code span (`` `dest` ``). Exit status 1,
listing the missing names, if any does not.

    python scripts/check_attributions.py [--dir data/starter-photos]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "starter-photos"


def missing_dests(folder: Path) -> tuple[int, list[str]]:
    """Return (number of manifest rows, dests that ATTRIBUTIONS.md does not mention)."""
    with open(folder / "MANIFEST.tsv", encoding="utf-8", newline="") as f:
        dests = [row["dest"] for row in csv.DictReader(f, delimiter="\t")]
    text = (folder / "ATTRIBUTIONS.md").read_text(encoding="utf-8")
    return len(dests), [d for d in dests if f"`{d}`" not in text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder with MANIFEST.tsv and ATTRIBUTIONS.md")
    args = parser.parse_args(argv)
    total, missing = missing_dests(args.dir)
    if missing:
        print(f"{len(missing)} of {total} files in MANIFEST.tsv are missing from ATTRIBUTIONS.md:", file=sys.stderr)
        for dest in missing:
            print(f"  {dest}", file=sys.stderr)
        return 1
    print(f"ATTRIBUTIONS.md credits all {total} files of MANIFEST.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
