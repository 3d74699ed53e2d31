# Scores: the challenges' own metrics on held-out predictions (`unet evaluate`), and a
# figure of each scored prediction against its ground truth for the report.
#
# ISBI runs (fold{k}) score their probability stack against the label pages they held
# out (`--fold k --folds N`, the blocks training held out and prediction predicted).
# CTC runs (01, 02: the training sequence) score the other sequence's result masks
# against its official ground truth (the IoU outside the cells it leaves unannotated).
# Folder runs (fold{k}) score their probability stack against the labels of the images they
# held out, each at its true size, with the metrics of the masks' kind (`unet evaluate split`).


rule evaluate_isbi:
    input:
        probabilities="results/predictions/{dataset}/{run}/seed{seed}/probabilities.tif",
        labels=lambda w: split_files(w.dataset, run_of(w).split)["labels"],
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
        run=pipeline.FOLD_RUN_PATTERN,
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        fold=lambda w: run_of(w).fold_flags(FOLDS[w.dataset]),
        settings=lambda w: flags(w, "evaluate"),
    shell:
        "unet evaluate isbi {input.probabilities:q} {input.labels:q} {params.fold} {params.settings}"
        " --out {output.scores:q} --figure {output.figure:q} > {log:q} 2>&1"


rule evaluate_ctc:
    input:
        results=lambda w: (
            f"results/predictions/{w.dataset}/{w.run}/seed{w.seed}/{run_of(w).predicts}_RES"
        ),
        raw="results/raw/{dataset}",
        unannotated=lambda w: split_files(w.dataset, run_of(w).predicts)["unannotated"],
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
        run=pipeline.SEQUENCE_PATTERN,
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        ground_truth=lambda w, input: f"{input.raw}/{run_of(w).predicts}_GT",
        split=subpath(input.unannotated, parent=True),
    shell:
        "unet evaluate ctc {input.results:q} {params.ground_truth:q} --unannotated {params.split:q}"
        " --out {output.scores:q} --figure {output.figure:q} > {log:q} 2>&1"


rule evaluate_folder:
    input:
        unpack(
            lambda w: split_files(w.dataset, run_of(w).split)
            | {
                "probabilities": f"results/predictions/{w.dataset}/{w.run}/seed{w.seed}/probabilities.tif"
            }
        ),
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
        "results/logs/evaluate_folder/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_folder/{dataset}/{run}/seed{seed}.tsv"
    wildcard_constraints:
        dataset=PROTOCOL_DATASETS["folder"],
        run=pipeline.FOLD_RUN_PATTERN,
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        data=subpath(input.frames, parent=True),
        fold=lambda w: run_of(w).fold_flags(FOLDS[w.dataset]),
        settings=lambda w: flags(w, "evaluate"),
        instances=lambda w: pipeline.instance_flags(config, w.dataset),
    shell:
        "unet evaluate split {input.probabilities:q} {params.data:q} {params.fold} {params.settings}"
        " {params.instances} --out {output.scores:q} --figure {output.figure:q} > {log:q} 2>&1"
