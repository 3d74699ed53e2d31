# Overlap-tile prediction (unet/predict.py): each model predicts the frames it did not see.
#
#   run fold{k}:      the k-th contiguous block of the labelled frames (0-based): ISBI's
#                     training slices, a folder data set's images in their seeded order;
#   isbi run all:     the test volume, plus the challenge submission stack;
#   ctc run 01 / 02:  the model trained on one sequence predicts the other and
#                     writes its {other}_RES/maskTTT.tif for every frame;
#   ctc test:         both models, averaged, predict the challenge's test sequences
#                     (ctc.predict_test), into results/predictions/{dataset}-test/.
# Settings: the `predict` section merged with the data set's own (config/README.md).
# Like training, each job runs on a GPU of its own where there are several (`unet gpu`).


rule predict_fold:
    input:
        unpack(prediction_inputs),
    output:
        "results/predictions/{dataset}/{run}/seed{seed}/probabilities.tif",
    log:
        "results/logs/predict_fold/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict_fold/{dataset}/{run}/seed{seed}.tsv"
    wildcard_constraints:
        dataset=CROSS_VALIDATED_DATASETS,
        run=pipeline.FOLD_RUN_PATTERN,
    conda:
        "../../envs/unet.yaml"
    threads: lambda w: config["threads"]["predict"]
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data=subpath(input.frames, parent=True),
        fold=lambda w: run_of(w).fold_flags(FOLDS[w.dataset]),
        settings=lambda w: flags(w, "predict"),
    shell:
        "unet gpu -- unet predict --model {input.model} --data {params.data} --out {output}"
        " {params.fold} {params.settings} > {log} 2>&1"


rule predict_isbi_test:
    input:
        unpack(prediction_inputs),
    output:
        probabilities="results/predictions/{dataset}/{run}/seed{seed}/probabilities.tif",
        submission="results/predictions/{dataset}/{run}/seed{seed}/submission.tif",
    log:
        "results/logs/predict_isbi_test/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict_isbi_test/{dataset}/{run}/seed{seed}.tsv"
    wildcard_constraints:
        dataset=PROTOCOL_DATASETS["isbi"],
        run=pipeline.ALL_SLICES,
    conda:
        "../../envs/unet.yaml"
    threads: lambda w: config["threads"]["predict"]
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data=subpath(input.frames, parent=True),
        settings=lambda w: flags(w, "predict"),
    shell:
        "unet gpu -- unet predict --model {input.model} --data {params.data} --out {output.probabilities}"
        " --submission {output.submission} {params.settings} > {log} 2>&1"


# A CTC model predicts a sequence ({tested}: the other one, when it is scored) and writes
# the challenge's result folder for it.
rule predict_ctc:
    input:
        unpack(lambda w: prediction_inputs(w, w.tested)),
    output:
        probabilities="results/predictions/{dataset}/{run}/seed{seed}/{tested}_probabilities.tif",
        masks=directory("results/predictions/{dataset}/{run}/seed{seed}/{tested}_RES"),
    log:
        "results/logs/predict_ctc/{dataset}/{run}/seed{seed}/{tested}.log",
    benchmark:
        "results/benchmarks/predict_ctc/{dataset}/{run}/seed{seed}/{tested}.tsv"
    wildcard_constraints:
        dataset=PROTOCOL_DATASETS["ctc"],
        tested=pipeline.SEQUENCE_PATTERN,
    conda:
        "../../envs/unet.yaml"
    threads: lambda w: config["threads"]["predict"]
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data=subpath(input.frames, parent=True),
        settings=lambda w: flags(w, "predict"),
    shell:
        "unet gpu -- unet predict --model {input.model} --data {params.data} --out {output.probabilities}"
        " --instances {output.masks} {params.settings} > {log} 2>&1"


# The challenge's test sequences: the mean of both training sequences' models.
rule predict_ctc_test:
    input:
        models=lambda w: expand(
            "results/models/{{dataset}}/{run}/seed{{seed}}/model.pt",
            run=pipeline.CTC_SEQUENCES,
        ),
        images="results/data/{dataset}-test/{tested}/images.tif",
        frames="results/data/{dataset}-test/{tested}/frames.json",
    output:
        probabilities="results/predictions/{dataset}-test/seed{seed}/{tested}_probabilities.tif",
        masks=directory("results/predictions/{dataset}-test/seed{seed}/{tested}_RES"),
    log:
        "results/logs/predict_ctc_test/{dataset}/seed{seed}/{tested}.log",
    benchmark:
        "results/benchmarks/predict_ctc_test/{dataset}/seed{seed}/{tested}.tsv"
    wildcard_constraints:
        dataset=PROTOCOL_DATASETS["ctc"],
        tested=pipeline.SEQUENCE_PATTERN,
    conda:
        "../../envs/unet.yaml"
    threads: lambda w: config["threads"]["predict"]
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data=subpath(input.frames, parent=True),
        settings=lambda w: flags(w, "predict"),
    shell:
        "unet gpu -- unet predict --model {input.models} --data {params.data} --out {output.probabilities}"
        " --instances {output.masks} {params.settings} > {log} 2>&1"
