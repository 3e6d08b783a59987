#!/usr/bin/env python
"""Regenerate the parameter and FLOP columns of the RMNet paper's tables and compare them with the
printed values.

Prints a Markdown report (one table per paper table, paper / ours in every cell); `--json` and
`--markdown` also write it to files. Exits with status 1 when a row disagrees with the paper and
is not a documented paper inconsistency.

    .venv/bin/python -m scripts.paper_tables
    .venv/bin/python -m scripts.paper_tables --tables table3 depth --json outputs/paper_tables.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paper import TABLES, check_rows, failures
from paper.report import to_json, to_markdown


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", choices=sorted(TABLES), default=list(TABLES),
                        help="which tables to check (default: all): table1, table2, table3 and the "
                             "authors' README depth table")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--json", type=Path, help="write the per-row results as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [row for name in args.tables for row in TABLES[name]]
    results = check_rows(rows, progress=not args.no_progress)
    markdown = to_markdown(results)
    print(markdown)
    for path, text in ((args.markdown, markdown), (args.json, json.dumps(to_json(results), indent=2))):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
    bad = failures(results)
    if bad:
        names = ", ".join(f"{r.row.table} {r.row.label} ({r.row.dataset})" for r in bad)
        print(f"error: {len(bad)} row(s) disagree with the paper or name a missing model: {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
