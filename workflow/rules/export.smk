# bioimage.io model packages (unet/export.py) of the models the run keeps, for deepImageJ
# (Fiji), ilastik, QuPath and napari: a zip per model, its test input from the images it
# was trained on. The report shows each package's cover and names its zip: the zips hold
# the weights twice (the paper's network: about 230 MB), too much to embed in report.html.


rule export:
    """Write one trained model as a bioimage.io package (spec 0.5), checked by its own test tensors."""
    input:
        model="results/models/{dataset}/{run}/seed{seed}/model.pt",
        images=lambda w: split_files(w.dataset, run_of(w).split)["images"],
    output:
        package="results/exports/{dataset}/{run}/seed{seed}/model.bioimageio.zip",
        cover=report(
            "results/exports/{dataset}/{run}/seed{seed}/cover.png",
            caption="../report/export.rst",
            category="bioimage.io models",
            subcategory="{dataset}",
            labels={"run": "{run}", "seed": "{seed}"},
        ),
    log:
        "results/logs/export/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/export/{dataset}/{run}/seed{seed}.tsv"
    conda:
        "../../envs/unet.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "unet export {input.model:q} {output.package:q} --image {input.images:q}"
        " --dataset {wildcards.dataset:q} --cover {output.cover:q} > {log:q} 2>&1"
