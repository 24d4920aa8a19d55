"""DeepFusion benchmark on the real catalog: accuracy, speed and memory of every model.

    python benchmarks/run.py                      # all but the opt-in sections, then RESULTS.md rendered
    python benchmarks/run.py --sections metadata  # one part only
    python benchmarks/run.py --sections finetune --finetune-configs 2x3,4x6  # opt-in: backbone fine-tuning
    python benchmarks/run.py --sections refit --refit-splits 42,7,11,19,23  # opt-in: fusion with --refit
    python benchmarks/run.py --sections missing_inputs --missing-splits 42,7,11  # empty fields, three splits
    python benchmarks/run.py --sections scaling                             # opt-in: cost growth to 400k, Ray
    python benchmarks/run.py --sections scaling_memory                      # opt-in: flat predict, fit B/product
    python benchmarks/run.py --sections serving --serve-model RUN/fusion    # opt-in: server latency, throughput
    python benchmarks/run.py --sections other_catalogs                      # opt-in: the Amazon catalogs
    python benchmarks/run.py --sections links                               # opt-in: image links vs local files
    python benchmarks/run.py --render                                       # only RESULTS.md, from results/

Each section (benchmarks/sections/) measures and returns plain numbers; each section run writes them to a file of
its own, benchmarks/results/<date>T<HHMM>-<commit>-<section>.json, and RESULTS.md is rendered from the latest
file of each section (benchmarks/render.py). All models share one catalog load and one leakage-safe split (seed
42), so their numbers are comparable; speeds are reported as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import render
import result_files
from bench import DEFAULT_DATA, HERE, Bench
from sections import OPT_IN, SECTIONS

log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "runs", help="where the trained models go")
    parser.add_argument("--sections", default=",".join(k for k in SECTIONS if k not in OPT_IN),
                        help="comma-separated, of: " + ", ".join(SECTIONS))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=result_files.RESULTS,
                        help="folder of results files (a folder other than the default gets its own RESULTS.md)")
    parser.add_argument("--render", action="store_true", help="measure nothing: render RESULTS.md only")
    parser.add_argument("--no-render", action="store_true", help="write the results files, leave RESULTS.md")
    parser.add_argument("--finetune-configs", default="2x3", help="finetune section: BLOCKSxEPOCHS,...")
    parser.add_argument("--finetuned-weights", type=Path, default=None, help="finetune section: tuned backbones")
    parser.add_argument("--refit-splits", default="42,7,11,19,23", help="refit section: split seeds")
    parser.add_argument("--reuse-refit", action="store_true",
                        help="refit section: reuse models already trained under OUT/refit/")
    parser.add_argument("--reuse-missing", action="store_true",
                        help="missing_inputs section: reuse OUT/missing/fusion and OUT/missing/seedN/fusion if trained")
    parser.add_argument("--missing-splits", default="42",
                        help="missing_inputs section: split seeds (42: the quick start's split)")
    parser.add_argument("--catalog-seeds", default="0",
                        help="other_catalogs section: split seeds (each catalog's 80/20 split drawn with each)")
    parser.add_argument("--sentence-model", default="auto",
                        help="other_catalogs section: the fusion model's sentence_model (auto: the default "
                        "model's choice; none: TF-IDF alone; or a name or folder)")
    parser.add_argument("--serve-model", type=Path, default=None, help="serving section: the model folder served")
    parser.add_argument("--scaling-workdir", type=Path, default=None,
                        help="scaling section: keep its catalogs and caches here")
    parser.add_argument("--links-n", type=int, default=500, help="links section: photos per run")
    parser.add_argument("--links-workers", type=int, default=16, help="links section: downloads at once")
    parser.add_argument("--links-runs", type=int, default=2, help="links section: runs")
    return parser.parse_args(argv)


def section_options(args: argparse.Namespace) -> dict:
    """The options sections read (``Bench.options``)."""
    return {
        "finetune_configs": args.finetune_configs.split(","),
        "finetuned_weights": args.finetuned_weights,
        "refit_splits": [int(x) for x in args.refit_splits.split(",")],
        "reuse_refit": args.reuse_refit,
        "reuse_missing": args.reuse_missing,
        "missing_splits": [int(x) for x in args.missing_splits.split(",")],
        "catalog_seeds": [int(x) for x in args.catalog_seeds.split(",")],
        "sentence_model": args.sentence_model,
        "serve_model": args.serve_model,
        "scaling_workdir": args.scaling_workdir,
        "links_n": args.links_n,
        "links_workers": args.links_workers,
        "links_runs": args.links_runs,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [] if args.render else [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    bench = Bench(args.data, args.out, args.cache_dir, section_options(args), args.results)
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in names:
        bench.begin(name)
        figures = SECTIONS[name](bench)
        if figures is None:
            log.warning("section %s measured nothing (its data is missing)", name)
            continue
        path = result_files.write(name, {"command": command, "environment": bench.environment(), **figures},
                                  args.results, path=bench.record, head=bench.commit)
        log.info("section %s -> %s", name, path)
    if not args.no_render:
        out = HERE / "RESULTS.md" if args.results == result_files.RESULTS else args.results / "RESULTS.md"
        out.write_text(render.render(args.results))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
