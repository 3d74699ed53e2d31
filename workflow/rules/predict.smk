# Overlap-tile prediction (unet/predict.py): each model predicts the frames it did not see.
#
#   isbi run fold{k}: the k-th contiguous block of the training slices (0-based);
#   isbi run all:     the test volume, plus the challenge submission stack;
#   ctc run 01 / 02:  the model trained on one sequence predicts the other and
#                     writes its {other}_RES/maskTTT.tif for every frame.
# Settings: the `predict` section merged with the data set's own (config/README.md).

import os

from unet.config import cli_flags


rule predict_isbi_fold:
    input:
        model="results/models/{dataset}/fold{fold}/seed{seed}/model.pt",
        split="results/data/{dataset}/train/frames.json",
    output:
        "results/predictions/{dataset}/fold{fold}/seed{seed}/probabilities.tif",
    log:
        "results/logs/predict_isbi_fold/{dataset}/fold{fold}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict_isbi_fold/{dataset}/fold{fold}/seed{seed}.tsv"
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../../envs/unet.yaml"
    threads: 8
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data=lambda wildcards, input: os.path.dirname(input.split),
        folds=FOLDS,
        flags=lambda wildcards: cli_flags(settings("predict", wildcards.dataset)),
    shell:
        "unet predict --model {input.model} --data {params.data} --out {output} "
        "--fold {wildcards.fold} --folds {params.folds} {params.flags} > {log} 2>&1"


rule predict_isbi_test:
    input:
        model="results/models/{dataset}/all/seed{seed}/model.pt",
        split="results/data/{dataset}/test/frames.json",
    output:
        probabilities="results/predictions/{dataset}/all/seed{seed}/probabilities.tif",
        submission="results/predictions/{dataset}/all/seed{seed}/submission.tif",
    log:
        "results/logs/predict_isbi_test/{dataset}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict_isbi_test/{dataset}/seed{seed}.tsv"
    conda:
        "../../envs/unet.yaml"
    threads: 8
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data=lambda wildcards, input: os.path.dirname(input.split),
        flags=lambda wildcards: cli_flags(settings("predict", wildcards.dataset)),
    shell:
        "unet predict --model {input.model} --data {params.data} --out {output.probabilities} "
        "--submission {output.submission} {params.flags} > {log} 2>&1"


rule predict_ctc_01:
    input:
        model="results/models/{dataset}/01/seed{seed}/model.pt",
        split="results/data/{dataset}/02/frames.json",
    output:
        probabilities="results/predictions/{dataset}/01/seed{seed}/probabilities.tif",
        masks=directory("results/predictions/{dataset}/01/seed{seed}/02_RES"),
    log:
        "results/logs/predict_ctc_01/{dataset}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict_ctc_01/{dataset}/seed{seed}.tsv"
    conda:
        "../../envs/unet.yaml"
    threads: 8
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data=lambda wildcards, input: os.path.dirname(input.split),
        flags=lambda wildcards: cli_flags(settings("predict", wildcards.dataset)),
    shell:
        "unet predict --model {input.model} --data {params.data} --out {output.probabilities} "
        "--instances {output.masks} {params.flags} > {log} 2>&1"


use rule predict_ctc_01 as predict_ctc_02 with:
    input:
        model="results/models/{dataset}/02/seed{seed}/model.pt",
        split="results/data/{dataset}/01/frames.json",
    output:
        probabilities="results/predictions/{dataset}/02/seed{seed}/probabilities.tif",
        masks=directory("results/predictions/{dataset}/02/seed{seed}/01_RES"),
    log:
        "results/logs/predict_ctc_02/{dataset}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict_ctc_02/{dataset}/seed{seed}.tsv"
