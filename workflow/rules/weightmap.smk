# Weight maps: the training targets and loss weight maps of each labelled split, computed once
# (unet/weightmap.py), and the report's figures of the weight map (the paper's Fig. 3) and of
# the augmentation that training applies to them (unet/augment.py).


# The ISBI test volume has no labels, hence no weight maps.
rule weightmap:
    input:
        unpack(lambda w: split_files(w.dataset, w.split)),
    output:
        target="results/weights/{dataset}/{split}/target.tif",
        weights="results/weights/{dataset}/{split}/weights.tif",
        record="results/weights/{dataset}/{split}/weightmap.json",
    log:
        "results/logs/weightmap/{dataset}-{split}.log",
    benchmark:
        "results/benchmarks/weightmap/{dataset}-{split}.tsv"
    wildcard_constraints:
        split=pipeline.LABELLED_SPLIT_PATTERN,
    priority: pipeline.DATA_PRIORITY
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data=subpath(input.frames, parent=True),
        out=subpath(output.target, parent=True),
        flags=lambda w: flags(w, "weightmap"),
    shell:
        "unet weightmap {params.data} {params.out} {params.flags} > {log} 2>&1"


rule weightmap_figure:
    input:
        unpack(lambda w: split_files(w.dataset, FIGURE_SPLIT[w.dataset])),
    output:
        report(
            "results/figures/weightmap-{dataset}.png",
            caption="../report/weightmap.rst",
            category="Weight maps and augmentation",
            labels={"data set": "{dataset}", "figure": "weight map"},
        ),
    log:
        "results/logs/weightmap_figure/{dataset}.log",
    benchmark:
        "results/benchmarks/weightmap_figure/{dataset}.tsv"
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data=subpath(input.frames, parent=True),
        flags=lambda w: flags(w, "weightmap"),
    shell:
        "unet weightmap {params.data} --figure {output} {params.flags} > {log} 2>&1"


rule augment_figure:
    input:
        unpack(lambda w: training_inputs(w.dataset, FIGURE_SPLIT[w.dataset])),
    output:
        report(
            "results/figures/augment-{dataset}.png",
            caption="../report/augment.rst",
            category="Weight maps and augmentation",
            labels={"data set": "{dataset}", "figure": "augmentation"},
        ),
    log:
        "results/logs/augment_figure/{dataset}.log",
    benchmark:
        "results/benchmarks/augment_figure/{dataset}.tsv"
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        data=subpath(input.frames, parent=True),
        weights=subpath(input.target, parent=True),
        seed=config["seeds"][0],
        input_size=lambda w: pipeline.stage_settings(
            config, "train", w.dataset
        ).input_size,
        depth=lambda w: pipeline.stage_settings(config, "model", w.dataset).depth,
        flags=lambda w: flags(w, "augment"),
    shell:
        "unet augment {params.data} {params.weights} --figure {output} --seed {params.seed}"
        " --input-size {params.input_size} --depth {params.depth} {params.flags} > {log} 2>&1"
