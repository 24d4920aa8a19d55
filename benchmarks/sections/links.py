"""Images fetched from links vs read from local files (benchmarks/links.py), on generated photos: no catalog
needed. ``--links-runs`` runs of ``--links-n`` photos; each rate is kept per run, so the page shows their spread."""

from __future__ import annotations

from typing import Any

from bench import Bench


def measure(b: Bench) -> dict[str, Any]:
    import links

    n, workers, runs = (b.options.get(k, d) for k, d in (("links_n", 500), ("links_workers", 16), ("links_runs", 2)))
    results = [links.fetch_vs_local(n, workers) for _ in range(runs)]
    return {
        "command": f"python benchmarks/run.py --sections links --links-n {n} --links-workers {workers} "
        f"--links-runs {runs}",
        "images": n,
        "mean_kb": results[0]["mean_kb"],
        "workers": workers,
        "images_per_s": {k: [r[f"{k}_images_per_s"] for r in results] for k in ("fetch", "cached", "local")},
    }
