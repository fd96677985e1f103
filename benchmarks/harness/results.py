"""Where results go and how they are written: JSON + markdown + PNG figures.

Files are named `<YYYY-MM-DD>-<machine>-<study>[-quick]` in
benchmarks/results/ by default, so runs on other days or machines sit
beside each other instead of overwriting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.env import log, machine_slug

RESULTS = Path(__file__).resolve().parents[1] / "results"


def parser(doc: str | None, quick: str | None = None) -> argparse.ArgumentParser:
    """A study's command line: its first docstring line, --out, and --quick
    (with the help text `quick`) where the study has a smoke mode."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    if quick:
        p.add_argument("--quick", action="store_true", help=quick)
    return p


def stem(study: str, quick: bool = False) -> str:
    """`<date>-<machine>-<study>[-quick]`: the file name of a run's results."""
    return f"{dt.date.today().isoformat()}-{machine_slug()}-{study}" + ("-quick" if quick else "")


def publish(
    results: dict[str, Any],
    out: Path,
    name: str,
    markdown: str,
    figures: Mapping[str, Callable[[Path], object]] | None = None,
) -> Path:
    """Draw each figure (file name -> draw(path)), then write <name>.json and .md.

    The JSON is written after the figures so a failed plot leaves no results
    file claiming figures that are not there.
    """
    out.mkdir(parents=True, exist_ok=True)
    for filename, draw in (figures or {}).items():
        draw(out / filename)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    log(f"wrote {path}")
    return path


def fmt(value: Any, digits: int | None = 2) -> str:
    """A table cell: '-' for missing/NaN; floats to `digits` (None: as they are)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | None = 2) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)
