"""One results file per section run: ``results/<date>T<HHMM>-<commit>-<section>.json``, never rewritten.

A file holds plain numbers: ``{"section", "date", "commit", ...the section's figures}``; a commit ending in ``+``
had uncommitted changes. Files migrated from the old single ``results.json`` (by ``migrate_results_json.py``, in git
history at d9c6681) have no time and the commit ``unknown`` in their name; ``recorded_in`` names the commit that
wrote their figures into ``results.json``. ``render.py`` builds RESULTS.md from the latest file of each section.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})(?:T(?P<time>\d{4}))?-(?P<commit>[^-]+)-(?P<section>[a-z_]+)\.json$")


def commit() -> str:
    """The checkout's short commit, with ``+`` when it has uncommitted changes; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}


def write(section: str, figures: dict[str, Any], folder: Path = RESULTS, *, partial: bool = False,
          path: Path | None = None, head: str | None = None) -> Path:
    """Write one section run's figures to a new dated file (or to ``path``, the same run's file, when given).
    ``head``: the commit the run started from (default: the checkout's now)."""
    now, head = time.localtime(), head or commit()
    path = path or folder / f"{time.strftime('%Y-%m-%dT%H%M', now)}-{head}-{section}.json"
    record = {"section": section, "date": time.strftime("%Y-%m-%d", now), "commit": head, **figures}
    if partial:
        record["partial"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


@dataclass(frozen=True, eq=False)
class Run:
    """One results file: its name's parts and its figures."""

    path: Path
    date: str
    time: str
    commit: str
    section: str
    figures: dict[str, Any]

    @property
    def when(self) -> str:
        return f"{self.date} {self.time[:2]}:{self.time[2:]}" if self.time else self.date


class Runs:
    """Every results file in a folder, by section, newest first (date, then time; a file without a time counts
    as the start of its day). Files of an unfinished run (``partial``) are left out."""

    def __init__(self, folder: Path = RESULTS) -> None:
        self.by_section: dict[str, list[Run]] = {}
        for path in sorted(folder.glob("*.json")):
            m = NAME.match(path.name)
            if not m:
                continue
            figures = json.loads(path.read_text())
            if figures.get("partial"):
                continue
            run = Run(path, m["date"], m["time"] or "", m["commit"], m["section"], figures)
            self.by_section.setdefault(run.section, []).append(run)
        for runs in self.by_section.values():
            runs.sort(key=lambda r: (r.date, r.time, r.path.name), reverse=True)

    def latest(self, section: str) -> Run | None:
        runs = self.by_section.get(section)
        return runs[0] if runs else None

    def all(self, section: str) -> list[Run]:
        return self.by_section.get(section, [])
