# Training (unet/train.py): one model per data set, run and seed.
#
#   isbi run fold{k}: the training slices except the k-th contiguous block, which gives
#                     the held-out scores in log.csv (and is what predict scores);
#   isbi run all:     all training slices (the model for the test volume);
#   ctc run 01 / 02:  the labelled frames of that sequence;
#   folder run fold{k}, all: as isbi's, over the images in their seeded order
#                     (datasets.NAME.folds); `all` is the model to use and export.
# Settings: the `model`, `augment` and `train` sections merged with the data set's own.


rule train:
    """Train one U-Net on a prepared split and its weight maps.

    The run picks split and held-out fold (unet.pipeline.parse_run). An interrupted job
    resumes from checkpoint.pt when run again with the same settings: the checkpoint is
    deliberately not an output, so Snakemake keeps it.
    """
    input:
        unpack(
            lambda w: training_inputs(w.dataset, run_of(w).split, run_of(w).held_out)
        ),
    output:
        model="results/models/{dataset}/{run}/seed{seed}/model.pt",
        log_csv="results/models/{dataset}/{run}/seed{seed}/log.csv",
        run="results/models/{dataset}/{run}/seed{seed}/run.json",
        figure=report(
            "results/models/{dataset}/{run}/seed{seed}/loss.png",
            caption="../report/loss.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"run": "{run}", "seed": "{seed}"},
        ),
    log:
        "results/logs/train/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{run}/seed{seed}.tsv"
    # Longest first (unet.pipeline.training_priority), so that two slots stay busy to the end.
    priority: lambda w: pipeline.training_priority(config, w.dataset)
    conda:
        "../../envs/unet.yaml"
    threads: lambda w: config["threads"]["train"]
    # GPU profiles add the `gpu` resource (and a partition) to this rule; `--device auto`
    # then trains on the GPU, and `unet gpu` gives each job its own where there are several.
    resources:
        mem_mb=16000,
        runtime=720,
    params:
        data=subpath(input.frames, parent=True),
        weights=subpath(input.weights, parent=True),
        out=subpath(output.model, parent=True),
        held_out=lambda w: held_out_flags(w),
        settings=lambda w: flags(w, "model", "augment", "train"),
        predict=lambda w: pipeline.model_predict_flags(config, w.dataset),
    shell:
        "unet gpu -- unet train --data {params.data} --weights {params.weights} --out {params.out}"
        " {params.held_out} --seed {wildcards.seed} {params.settings} {params.predict} > {log} 2>&1"
