"""Markdown for RESULTS.md, built from the numbers in the results files (the only place markdown is written).

Each table function takes the ``Runs`` of the results folder and returns a section's markdown, or None when the
section has never been measured.
"""

from __future__ import annotations

from typing import Any

from result_files import Run


def md_table(title: str, intro: str, header: list[str], rows: list[list[str]]) -> str:
    """A Markdown section: heading, optional intro line, then a table."""
    lines = [
        f"## {title}",
        "",
        *([intro, ""] if intro else []),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def interval(boot: dict[str, Any], metric: str) -> str:
    """A paired-bootstrap result as "difference [95% interval] (share of resamples ahead)", in points."""
    d = boot[metric]
    return f"{100 * d['difference']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] ({100 * d['a_ahead']:.0f}%)"


def with_mean_row(rows: list[dict[str, Any]], mean: dict[str, float], **bootstraps: Any) -> list[dict[str, Any]]:
    """A section's per-split rows plus a "mean" row: mean accuracies and macro-F1s, summed product counts
    ("only ... right", "both wrong") and the pooled bootstraps given by name."""
    counts = [k for k in rows[0] if k.startswith(("only_", "both_"))]
    return [*rows, {**mean, "split_seed": "mean", **{k: sum(r[k] for r in rows) for k in counts}, **bootstraps}]


def where(run: Run) -> str:
    """A run's date, commit and file, as a section cites it."""
    f = run.figures
    if run.commit == "unknown" and f.get("recorded_in"):
        commit = f"commit unknown, recorded in {f['recorded_in']}"
    else:
        commit = f"commit {run.commit}"
    return f"{run.when}, {commit}, [`results/{run.path.name}`](results/{run.path.name})"


def source(*runs: Run | None) -> str:
    """Where a section's figures come from: date, commit and file of each run."""
    return "Measured " + "; ".join(where(run) for run in runs if run is not None) + "."
