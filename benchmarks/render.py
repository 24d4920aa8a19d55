"""Build RESULTS.md from the latest results file of each section (``python benchmarks/render.py``).

    python benchmarks/render.py                                  # benchmarks/results/ -> benchmarks/RESULTS.md
    python benchmarks/render.py --results DIR --out FILE         # another folder, another page

Nothing is measured here; every figure on the page is read from a file in the results folder, and each section
names the file (date, commit) it comes from.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from result_files import HERE, RESULTS, Runs
from tables import catalogs, comparisons, models, scaling, speed

# RESULTS.md's sections in page order (after the header and the Models table).
TABLES: tuple[Callable[[Runs], str | None], ...] = (
    models.models,
    comparisons.missing_inputs,
    comparisons.baselines,
    comparisons.splits,
    comparisons.refit,
    catalogs.label_noise,
    comparisons.title_encoders,
    speed.embedding,
    speed.links,
    models.backbones,
    models.finetune,
    models.fusion_ablation,
    speed.prediction,
    scaling.scaling,
    scaling.scaling_memory,
    speed.serving,
    catalogs.other_catalogs,
)


def header(runs: Runs) -> list[str]:
    """The page's title, and the catalog and split of the latest run that loaded the real catalog."""
    with_env = [r for rs in runs.by_section.values() for r in rs if r.figures.get("environment", {}).get("catalog")]
    lines = ["# DeepFusion benchmark results", ""]
    intro = (
        "Rendered by `python benchmarks/render.py` from the latest results file of each section in "
        "[`results/`](results/) (`python benchmarks/run.py --sections ...` writes one file per section run, named "
        "by date, time and commit); each section says when and at which commit it was measured."
    )
    if with_env:
        env_run = max(with_env, key=lambda r: (r.date, r.time, r.path.name))
        env = env_run.figures["environment"]
        intro += (
            f" Latest catalog load ({env_run.date}, {env.get('cpus')} CPUs, Python {env.get('python')}, "
            f"{env.get('machine')}): {env.get('catalog')}. Leakage-safe split (duplicate products kept on one "
            f"side), seed 42: {env.get('split')}. All accuracies are on the held-out test split."
        )
    return [*lines, intro, ""]


def render(folder: Path = RESULTS) -> str:
    runs = Runs(folder)
    lines = header(runs)
    for table in TABLES:
        md = table(runs)
        if md:
            lines += [md, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of results files")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
