# Scores: the challenges' own metrics on held-out predictions (`unet evaluate`), and a
# figure of each scored prediction against its ground truth for the report.
#
# ISBI runs (fold{k}) score their probability stack against the label pages they held
# out (`--fold k --folds N`, the blocks training held out and prediction predicted).
# CTC runs (01, 02: the training sequence) score the other sequence's result masks
# against its official ground truth.

import os

from unet.config import cli_flags


rule evaluate_isbi:
    input:
        probabilities="results/predictions/{dataset}/{run}/seed{seed}/probabilities.tif",
        # written last by `prepare`, after labels.tif
        split="results/data/{dataset}/train/frames.json",
    output:
        scores="results/scores/{dataset}/{run}/seed{seed}.json",
        figure=report(
            "results/figures/overlay-{dataset}-{run}-seed{seed}.png",
            caption="../report/overlay.rst",
            category="Predictions",
            subcategory="{dataset}",
            labels={"run": "{run}", "seed": "{seed}"},
        ),
    log:
        "results/logs/evaluate_isbi/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_isbi/{dataset}/{run}/seed{seed}.tsv"
    wildcard_constraints:
        dataset=PROTOCOL_DATASETS["isbi"],
        run=r"fold\d+",
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        labels=lambda wildcards, input: os.path.join(
            os.path.dirname(input.split), "labels.tif"
        ),
        fold=lambda wildcards: wildcards.run[len("fold") :],
        folds=FOLDS,
        settings=lambda wildcards: cli_flags(settings("evaluate", wildcards.dataset)),
    shell:
        "unet evaluate isbi {input.probabilities:q} {params.labels:q}"
        " --fold {params.fold} --folds {params.folds} {params.settings}"
        " --out {output.scores:q} --figure {output.figure:q} > {log:q} 2>&1"


rule evaluate_ctc:
    input:
        results=lambda wildcards: (
            f"results/predictions/{wildcards.dataset}/{wildcards.run}/seed{wildcards.seed}/"
            f"{OTHER_SEQUENCE[wildcards.run]}_RES"
        ),
        raw="results/raw/{dataset}",
    output:
        scores="results/scores/{dataset}/{run}/seed{seed}.json",
        figure=report(
            "results/figures/overlay-{dataset}-{run}-seed{seed}.png",
            caption="../report/overlay.rst",
            category="Predictions",
            subcategory="{dataset}",
            labels={"run": "{run}", "seed": "{seed}"},
        ),
    log:
        "results/logs/evaluate_ctc/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_ctc/{dataset}/{run}/seed{seed}.tsv"
    wildcard_constraints:
        dataset=PROTOCOL_DATASETS["ctc"],
        run="01|02",
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        ground_truth=lambda wildcards, input: f"{input.raw}/{OTHER_SEQUENCE[wildcards.run]}_GT",
    shell:
        "unet evaluate ctc {input.results:q} {params.ground_truth:q}"
        " --out {output.scores:q} --figure {output.figure:q} > {log:q} 2>&1"
