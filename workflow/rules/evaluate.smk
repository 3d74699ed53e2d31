# Scores: the challenges' own metrics on held-out predictions (`unet evaluate`).
#
# ISBI runs (fold{k}) score their probability stack against the label pages they
# held out; the page selection comes from `heldout_slices(dataset, run)`, the
# fold split that common.smk shares with the training and prediction rules.
# CTC runs (01, 02: the training sequence) score the other sequence's result
# masks against its official ground truth.

from unet.config import cli_flags

# Wildcard constraints for the data sets of each protocol ("(?!)", nothing, for none).
PROTOCOL_DATASETS = {
    protocol: "|".join(
        re.escape(name)
        for name, spec in config["datasets"].items()
        if spec["protocol"] == protocol
    )
    or "(?!)"
    for protocol in ("isbi", "ctc")
}
CTC_TEST_SEQUENCE = {"01": "02", "02": "01"}


rule evaluate_isbi:
    input:
        probabilities="results/predictions/{dataset}/{run}/seed{seed}/probabilities.tif",
        # written last by `prepare`, after labels.tif
        split="results/data/{dataset}/train/frames.json",
    output:
        "results/scores/{dataset}/{run}/seed{seed}.json",
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
        labels="results/data/{dataset}/train/labels.tif",
        slices=lambda wildcards: heldout_slices(wildcards.dataset, wildcards.run),
        settings=lambda wildcards: cli_flags(settings("evaluate", wildcards.dataset)),
    shell:
        "unet evaluate isbi {input.probabilities:q} {params.labels:q} --slices {params.slices}"
        " {params.settings} --out {output:q} > {log:q} 2>&1"


rule evaluate_ctc:
    input:
        results=lambda wildcards: (
            f"results/predictions/{wildcards.dataset}/{wildcards.run}/seed{wildcards.seed}/"
            f"{CTC_TEST_SEQUENCE[wildcards.run]}_RES"
        ),
        raw="results/raw/{dataset}",
    output:
        "results/scores/{dataset}/{run}/seed{seed}.json",
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
        ground_truth=lambda wildcards, input: f"{input.raw}/{CTC_TEST_SEQUENCE[wildcards.run]}_GT",
    shell:
        "unet evaluate ctc {input.results:q} {params.ground_truth:q} --out {output:q} > {log:q} 2>&1"
