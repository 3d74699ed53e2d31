# Data: fetch (download, copy from a mirror, verify, unpack) or synthesize each data set into
# results/raw/{dataset}/ in its official layout, then prepare the canonical splits that the
# later stages read. A data set whose source is "synthetic" is made by `synthesize`; a folder
# data set (your own images) is prepared from its folder where it is; every other one is
# fetched (from `mirror` when it is set).
SYNTHETIC = [d for d in DATASETS if config["datasets"][d]["source"] == "synthetic"]
FETCHED = [d for d in DATASETS if d not in SYNTHETIC and PROTOCOL[d] != pipeline.FOLDER]
FETCHED_CTC = [d for d in FETCHED if PROTOCOL[d] == "ctc"]
# The `fetch` and `synthesize` rules write the same paths for disjoint data sets.
ONE_OF = {
    "synthetic": one_of(SYNTHETIC),
    "fetched": one_of(FETCHED),
    "fetched_ctc": one_of(FETCHED_CTC),
}


localrules:
    fetch,
    fetch_test,


rule fetch:
    output:
        directory("results/raw/{dataset}"),
    log:
        "results/logs/fetch/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch/{dataset}.tsv"
    wildcard_constraints:
        dataset=ONE_OF["fetched"],
    priority: pipeline.DATA_PRIORITY
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        flags=lambda w: pipeline.fetch_flags(config, w.dataset),
    shell:
        "unet fetch {wildcards.dataset} --out {output} {params.flags} > {log} 2>&1"


# The Cell Tracking Challenge's test sequences (no labels), for the submission files.
rule fetch_test:
    output:
        directory("results/raw/{dataset}-test"),
    log:
        "results/logs/fetch_test/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_test/{dataset}.tsv"
    wildcard_constraints:
        dataset=ONE_OF["fetched_ctc"],
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        flags=lambda w: pipeline.fetch_flags(config, w.dataset, part="test"),
    shell:
        "unet fetch {wildcards.dataset} --out {output} {params.flags} > {log} 2>&1"


rule synthesize:
    output:
        directory("results/raw/{dataset}"),
    log:
        "results/logs/synthesize/{dataset}.log",
    benchmark:
        "results/benchmarks/synthesize/{dataset}.tsv"
    wildcard_constraints:
        dataset=ONE_OF["synthetic"],
    priority: pipeline.DATA_PRIORITY
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        kind_and_flags=lambda w: pipeline.synthetic_flags(config, w.dataset),
    shell:
        "unet synthesize {params.kind_and_flags} {output} > {log} 2>&1"


# The labelled splits: ISBI's training slices, the CTC training sequences, a folder's images.
rule prepare:
    input:
        lambda w: raw_data(w.dataset),
    output:
        images="results/data/{dataset}/{split}/images.tif",
        labels="results/data/{dataset}/{split}/labels.tif",
        unannotated="results/data/{dataset}/{split}/unannotated.tif",
        frames="results/data/{dataset}/{split}/frames.json",
    log:
        "results/logs/prepare/{dataset}-{split}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}-{split}.tsv"
    wildcard_constraints:
        split=pipeline.LABELLED_SPLIT_PATTERN,
    priority: pipeline.DATA_PRIORITY
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        protocol=lambda w: PROTOCOL[w.dataset],
        raw=lambda w: raw_folder(w.dataset),
        out=subpath(output.frames, ancestor=2),
        flags=lambda w: pipeline.prepare_flags(config, w.dataset),
    shell:
        "unet prepare {wildcards.dataset} --protocol {params.protocol} --raw {params.raw:q}"
        " --out {params.out} --splits {wildcards.split} {params.flags} > {log} 2>&1"


# The ISBI test volume (no labels), for the submission file.
use rule prepare as prepare_isbi_test with:
    output:
        images="results/data/{dataset}/{split}/images.tif",
        frames="results/data/{dataset}/{split}/frames.json",
    log:
        "results/logs/prepare_isbi_test/{dataset}-{split}.log",
    benchmark:
        "results/benchmarks/prepare_isbi_test/{dataset}-{split}.tsv"
    wildcard_constraints:
        dataset=PROTOCOL_DATASETS["isbi"],
        split="test",


# The Cell Tracking Challenge's test sequences (no labels), for the submission files.
rule prepare_ctc_test:
    input:
        "results/raw/{dataset}-test",
    output:
        images="results/data/{dataset}-test/{split}/images.tif",
        frames="results/data/{dataset}-test/{split}/frames.json",
    log:
        "results/logs/prepare_ctc_test/{dataset}-{split}.log",
    benchmark:
        "results/benchmarks/prepare_ctc_test/{dataset}-{split}.tsv"
    wildcard_constraints:
        dataset=ONE_OF["fetched_ctc"],
        split=pipeline.SEQUENCE_PATTERN,
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        out=subpath(output.frames, ancestor=2),
    shell:
        "unet prepare {wildcards.dataset} --protocol ctc --part test --raw {input}"
        " --out {params.out} --splits {wildcards.split} > {log} 2>&1"
