"""Tables that compare the fusion model with the baselines: missing inputs, plain baselines, splits, refit."""

from __future__ import annotations

from result_files import Run, Runs

from . import interval, md_table, pct, source, with_mean_row


def missing_inputs(runs: Runs) -> str | None:
    run = runs.latest("missing_inputs")
    if not run:
        return None
    f = run.figures
    return md_table(
        "Missing inputs: products with empty fields",
        "The default fusion model on the test products with the fields of the withheld inputs emptied in the data "
        "(what `predict` and the service see), and once with each metadata field empty with chance 0.3. A product "
        "without a title is answered by the no-title network, one with a title but no attribute by the "
        "title + image linear SVM (without a photo: the title SVM; models saved by earlier versions also mix in a "
        "network and an image expert, mixing.py). Baseline: TF-IDF + linear "
        "SVM fitted on the same text inputs and tested on the same "
        f"products. Fusion model trained on {f.get('fusion_trained') or 'an earlier day'}.",
        ["inputs", "emptied", "accuracy", "macro-F1", "TF-IDF + SVM baseline"],
        [
            [
                " + ".join(r["modalities"]),
                ", ".join(r["withheld"]) or "nothing",
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                pct(r["baseline_accuracy"]) if r["baseline_accuracy"] is not None else "",
            ]
            for r in f["ablation"]
        ],
    ) + "\n\n" + _missing_inputs_by_split(f.get("splits") or []) + source(run) + _earlier_splits(runs, run)


def _earlier_splits(runs: Runs, latest: Run) -> str:
    """When the latest run measured one split: the other splits from the newest run that measured several (with its
    own date and commit), so a quick re-run of split 42 does not hide them."""
    if len(latest.figures.get("splits") or []) > 1:
        return ""
    earlier = next((r for r in runs.all("missing_inputs") if len(r.figures.get("splits") or []) > 1), None)
    if earlier is None:
        return ""
    return "\n\n" + _missing_inputs_by_split(earlier.figures["splits"], earlier=True) + source(earlier)


def _missing_inputs_by_split(splits: list[dict], earlier: bool = False) -> str:
    """The same rows on several leakage-safe splits (``--missing-splits``), fusion (baseline) per split; "" for one.
    ``earlier``: the splits come from an older run than the table above (its split 42 is that run's model)."""
    if len(splits) < 2:
        return ""
    rows = []
    for same in zip(*(s["ablation"] for s in splits), strict=True):  # one ablation row, as measured on each split
        cells = [pct(r["accuracy"]) + (f" ({pct(r['baseline_accuracy'])})" if r["baseline_accuracy"] is not None
                                       else "") for r in same]
        rows.append([" + ".join(same[0]["modalities"]), ", ".join(same[0]["withheld"]) or "nothing", *cells])
    return md_table(
        "Missing inputs on other splits",
        "The same rows for the default fusion model trained on other leakage-safe splits (split seed; "
        + ("from the newest run that measured several splits, an earlier model than the table above"
           if earlier else "42 is the table above")
        + "), the TF-IDF + SVM baseline in brackets: one split's test set moves these figures by tenths of a point.",
        ["inputs", "emptied", *[f"split {s['split_seed']}" for s in splits]],
        rows,
    ) + "\n\n"


def baselines(runs: Runs) -> str | None:
    run = runs.latest("baselines")
    if not run:
        return None
    f = run.figures
    md = md_table(
        "Plain baselines on the same split",
        "",
        ["baseline", "test accuracy", "macro-F1", "accuracy with titles withheld", "fit seconds"],
        [
            [
                r["baseline"],
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                pct(r["accuracy_without_title"]),
                f"{r['fit_seconds']:.0f}",
            ]
            for r in f["rows"]
        ],
    )
    paired = f.get("paired_with_fusion")
    if paired:
        md += (
            "\n\nFusion model (metadata + title + image) vs the TF-IDF + linear SVM, product by product on the "
            f"{f['test_products']:,} test products: both right {paired['both_right']:,}, only fusion right "
            f"{paired['only_fusion_right']}, only the SVM right {paired['only_svm_right']}, both wrong "
            f"{paired['both_wrong']}."
        )
    return md + "\n\n" + source(run)


def splits(runs: Runs) -> str | None:
    run = runs.latest("splits")
    if not run:
        return None
    f = run.figures
    return md_table(
        f"Fusion vs the text baseline on {len(f['rows'])} splits",
        "Leakage-safe splits with different seeds; fusion = the default regularized model (metadata + title + "
        "image), SVM = TF-IDF + linear SVM on metadata + title (the brief's text baseline). Last row: the mean. "
        "Macro-F1 is over the classes present in the test set. Fusion - SVM: the difference in points, its 95% "
        "paired-bootstrap interval (2,000 resamples of the test products; for the mean, each split resampled on "
        "its own) and the share of resamples in which fusion is ahead.",
        [
            "split seed",
            "fusion accuracy",
            "fusion macro-F1",
            "SVM accuracy",
            "SVM macro-F1",
            "only fusion right",
            "only SVM right",
            "both wrong",
            "fusion - SVM, accuracy",
            "fusion - SVM, macro-F1",
        ],
        [
            [
                str(r["split_seed"]),
                pct(r["fusion_accuracy"]),
                f"{r['fusion_macro_f1']:.4f}",
                pct(r["svm_accuracy"]),
                f"{r['svm_macro_f1']:.4f}",
                str(r["only_fusion_right"]),
                str(r["only_svm_right"]),
                str(r["both_wrong"]),
                interval(r["bootstrap"], "accuracy"),
                interval(r["bootstrap"], "macro_f1"),
            ]
            for r in with_mean_row(f["rows"], f["mean"], bootstrap=f["mean_bootstrap"])
        ],
    ) + "\n\n" + source(run)


def refit(runs: Runs) -> str | None:
    run = runs.latest("refit")
    if not run:
        return None
    f = run.figures
    rows = with_mean_row(f["rows"], f["mean"], bootstrap=f["mean_bootstrap"],
                         bootstrap_vs_svm=f["mean_bootstrap_vs_svm"])
    return md_table(
        "Refit on train + validation (`--refit`)",
        "The fusion model trained as usual (early stopping and temperature scaling on validation), then trained "
        "again on train + validation for the full 40 epochs with the same calibration, vs the default fusion model "
        "on the same leakage-safe split (`--sections refit`, opt-in). Refit - default: accuracy difference in "
        "points, 95% paired-bootstrap interval and the share of resamples in which refit is ahead. SVM (train + "
        "val): the TF-IDF + linear SVM text baseline fitted on the same products as the refit model; refit - SVM "
        "likewise, for accuracy and macro-F1 (classes present in the test set). Fit seconds include both passes.",
        [
            "split seed",
            "refit accuracy",
            "refit macro-F1",
            "default accuracy",
            "default macro-F1",
            "only refit right",
            "only default right",
            "refit - default, accuracy",
            "SVM (train + val) accuracy",
            "SVM (train + val) macro-F1",
            "refit - SVM, accuracy",
            "refit - SVM, macro-F1",
            "fit seconds (refit / default)",
        ],
        [
            [
                str(r["split_seed"]),
                pct(r["refit_accuracy"]),
                f"{r['refit_macro_f1']:.4f}",
                pct(r["default_accuracy"]),
                f"{r['default_macro_f1']:.4f}",
                str(r["only_refit_right"]),
                str(r["only_default_right"]),
                interval(r["bootstrap"], "accuracy"),
                pct(r["svm_train_val_accuracy"]),
                f"{r['svm_train_val_macro_f1']:.4f}",
                interval(r["bootstrap_vs_svm"], "accuracy"),
                interval(r["bootstrap_vs_svm"], "macro_f1"),
                f"{r['refit_fit_seconds']:.0f} / {r['default_fit_seconds']:.0f}" if "refit_fit_seconds" in r else "",
            ]
            for r in rows
        ],
    ) + "\n\n" + source(run)


def title_encoders(runs: Runs) -> str | None:
    run = runs.latest("title_encoders")
    if not run:
        return None
    f = run.figures
    seconds = f["encode_seconds"]
    return md_table(
        "Title encoder: TF-IDF vs a sentence model",
        "Metadata + title, the regularized network, same split (`--sections title_encoders`, needs the `minilm` "
        f"extra). Encoding all {f['titles']:,} titles: TF-IDF {seconds.get('tfidf', 0):.1f} s, "
        f"MiniLM {seconds.get('minilm', 0):.1f} s.",
        ["title encoder", "test accuracy", "macro-F1", "fit seconds"],
        [[r["title encoder"], pct(r["accuracy"]), f"{r['macro_f1']:.4f}", f"{r['fit_seconds']:.0f}"]
         for r in f["rows"]],
    ) + "\n\n" + source(run) + (f" {f['note']}" if f.get("note") else "")
