"""Tables of trained models: every model's row, the fusion ablation, backbones and fine-tuning."""

from __future__ import annotations

from typing import Any

from result_files import Runs

from . import md_table, pct, source, where

# The sections that train models, in the Models table's order.
TRAINING_SECTIONS = ("metadata", "image", "fusion", "seeds", "backbones", "finetune", "missing_inputs")


def model_row(key: str, m: dict[str, Any]) -> str:
    ceiling = f" ({pct(m['train_accuracy_ceiling'])})" if m.get("train_accuracy_ceiling") else ""
    opts = ", ".join(f"{k}={v}" for k, v in m.get("options", {}).items() if v not in ("None", ""))
    return (
        f"| {key.split('/')[0]} | {'+'.join(m['modalities'])} | {m['preset']}{' ' + opts if opts else ''} | "
        f"{pct(m['accuracy'])} | "
        f"{m['macro_f1']:.4f} | {m['weighted_f1']:.4f} | {m['rare_macro_f1']:.4f} | "
        f"{pct(m['train_accuracy'])}{ceiling} | {m['ece']:.3f} | {m['fit_seconds']:.0f} | "
        f"{m['epochs_run']} ({m['best_epoch']}) | {m['peak_rss_mb']:.0f} | {m.get('date', '')} |"
    )


def models(runs: Runs) -> str | None:
    sections = [(s, runs.latest(s)) for s in TRAINING_SECTIONS]
    sections = [(s, r) for s, r in sections if r and r.figures.get("models")]
    if not sections:
        return None
    lines = [
        "## Models",
        "",
        "| model | inputs | preset / option | test accuracy | macro-F1 | weighted-F1 | rare-class macro-F1 | "
        "train accuracy (ceiling) | ECE | fit seconds | epochs (best) | peak RSS MB | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, run in sections:
        lines += [model_row(key, m) for key, m in run.figures["models"].items()]
    lines += [
        "",
        "Train accuracy ceiling: the best any model can do on these inputs, since products with "
        "identical inputs but different labels cannot all be right. Peak RSS is the benchmark process's "
        "peak so far (it only grows), so it bounds each model's memory from above. Measured: the day the model "
        "was trained; the rows come from the latest run of each section (metadata, image, fusion, seeds, "
        "backbones, finetune), and a row keeps the code and defaults of its day. Fit seconds of a fusion model "
        "with a title include its no-title network (from 2026-11-28 on; about 95 s for metadata + image).",
        "",
        "Sections: " + "; ".join(f"{s}: {where(r)}" for s, r in sections) + ".",
    ]
    return "\n".join(lines)


def fusion_ablation(runs: Runs) -> str | None:
    run = runs.latest("fusion")
    if not run or "ablation" not in run.figures:
        return None
    return md_table(
        "Fusion: modality ablation",
        "The fusion model (metadata + title + image), with inputs withheld at prediction time. Without a title, "
        "the model's second network (trained without titles) answers; the last columns switch it off, so the "
        "main network answers with its title input marked missing.",
        ["inputs used", "accuracy", "macro-F1", "accuracy without the fallback", "macro-F1 without the fallback"],
        [
            [
                "+".join(r["modalities"]),
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                pct(r["without_fallback"]["accuracy"]),
                f"{r['without_fallback']['macro_f1']:.4f}",
            ]
            for r in run.figures["ablation"]
        ],
    ) + "\n\n" + source(run)


def backbones(runs: Runs) -> str | None:
    run = runs.latest("backbones")
    if not run:
        return None
    f = run.figures
    note = f"({f['note']}) " if f.get("note") else ""
    return md_table(
        "Image backbones",
        f"{note}Image-only regularized model per backbone; cold embedding of the whole catalog "
        f"({f['n_images']:,} images) measured in the same run:",
        ["backbone", "input (HxW)", "test accuracy", "macro-F1", "cold embedding s", "img/s"],
        [
            [
                r["backbone"],
                r["input_size"],
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                f"{r['cold_seconds']:.0f}",
                f"{f['n_images'] / r['cold_seconds']:.0f}",
            ]
            for r in f["rows"]
        ],
    ) + "\n\n" + source(run)


def _finetune_took(tuned: dict[str, Any]) -> str:
    if tuned.get("seconds") is not None:
        return f"{tuned['seconds']:.0f} s on {tuned.get('device', '?')}"
    return f"on {tuned.get('device', '?')} (time not recorded)"


def finetune(runs: Runs) -> str | None:
    run = runs.latest("finetune")
    if not run:
        return None
    frozen_runs = {k: runs.latest(k) for k in ("image", "fusion")}
    frozen = {k: (r.figures.get("models", {}).get(f"{k}/regularized") if r else None) for k, r in frozen_runs.items()}
    table = [
        [
            "frozen (default)",
            "",
            *(f"{pct(frozen[k]['accuracy'])} / {frozen[k]['macro_f1']:.4f}" if frozen[k] else "" for k in frozen),
        ]
    ] + [
        [
            f"last {r['config'].split('x')[0]} blocks, {r['config'].split('x')[1]} epochs",
            _finetune_took(r["finetune"]),
            *(f"{pct(r[k]['accuracy'])} / {r[k]['macro_f1']:.4f}" for k in ("image", "fusion")),
        ]
        for r in run.figures["rows"]
    ]
    return md_table(
        "Fine-tuned backbone",
        "The backbone's last blocks fine-tuned on the training images (`--finetune`) vs frozen, same split; test "
        "accuracy / macro-F1 (`--sections finetune`, opt-in):",
        ["backbone", "fine-tuning took", "image only", "fusion (metadata + title + image)"],
        table,
    ) + "\n\n" + source(run) + " Frozen: the image and fusion sections' models."
