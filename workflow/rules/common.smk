# Configuration checks, the experiments' runs and the final targets, shared by every rule file.
# The vocabulary (runs, splits, settings, flags) is unet.pipeline's, a light module: reading
# the workflow never imports torch.
import os
import re

from snakemake import __version__ as SNAKEMAKE_VERSION
from snakemake.utils import min_version, update_config

from unet import pipeline, provenance
from unet.gpus import GPUS_VARIABLE

min_version("9.0")

# `--config model={depth: 3}` gives the string "3": read the command line's values as a
# config file would have, so that they pass the schema (and its bounds are what is checked).
update_config(
    config, pipeline.typed_command_line_values(dict(workflow.config_settings.config))
)
# The schema, then every experiment's settings and the rules between them: a wrong key or
# value stops the run here, before any job, with a message naming it.
pipeline.check_config(
    config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
)

# The GPUs that training and prediction share, one job per GPU (`unet gpu`, config key `gpus`), reach the
# jobs in their environment, not as a param: choosing other GPUs does not rerun finished jobs.
os.environ[GPUS_VARIABLE] = ",".join(map(str, config.get("gpus") or []))
# The jobs' `unet` commands run the package that this workflow read (its checkout's: Snakemake puts the
# Snakefile's folder first on sys.path), not another installed copy: the commit that run.json records
# (provenance.SOURCE's) is the code that ran.
os.environ.update(PYTHONPATH=provenance.python_path_first())

EXPERIMENTS = list(config["experiments"])
DATASETS = list(config["datasets"])
SEEDS = list(config["seeds"])
PROTOCOL = {name: spec["protocol"] for name, spec in config["datasets"].items()}
# Cross-validation folds per data set: isbi.folds, a folder data set's own; None for CTC.
FOLDS = {name: pipeline.cross_validation_folds(config, name) for name in DATASETS}


def one_of(names):
    """A regular expression (a wildcard constraint) matching exactly `names`; "(?!)" matches nothing."""
    return "|".join(map(re.escape, names)) or "(?!)"


# The data sets of each protocol, as wildcard constraints.
PROTOCOL_DATASETS = {
    protocol: one_of(n for n, p in PROTOCOL.items() if p == protocol)
    for protocol in pipeline.PROTOCOLS
}
CROSS_VALIDATED_DATASETS = one_of(
    n for n, p in PROTOCOL.items() if p in pipeline.CROSS_VALIDATED
)
# The split each data set's figures show: ISBI's training slices, the first CTC sequence.
FIGURE_SPLIT = {name: pipeline.LABELLED_SPLITS[p][0] for name, p in PROTOCOL.items()}


wildcard_constraints:
    dataset=one_of(DATASETS),
    seed=r"\d+",
    run=pipeline.RUN_PATTERN,


def run_of(wildcards):
    """The pipeline.Run of a job's {dataset} and {run}: its split, fold and predicted split."""
    return pipeline.parse_run(
        PROTOCOL[wildcards.dataset], wildcards.run, FOLDS[wildcards.dataset]
    )


def flags(wildcards, *stages):
    """The flags of `stages`' settings for the job's data set."""
    return pipeline.stage_flags(config, wildcards.dataset, *stages)


def scored_runs(dataset):
    return pipeline.scored_runs(PROTOCOL[dataset], FOLDS[dataset])


def run_paths(pattern, datasets=EXPERIMENTS):
    """`pattern` for every scored run and seed of `datasets`."""
    return [
        pattern.format(dataset=dataset, run=run, seed=seed)
        for dataset in datasets
        for run in scored_runs(dataset)
        for seed in SEEDS
    ]


def all_slices_paths(pattern, protocols=pipeline.CROSS_VALIDATED):
    """`pattern` for every seed of the models of `protocols` trained on all labelled frames (run `all`), where
    the run trains them: ISBI's when it predicts the test volume, every folder data set's.
    """
    return [
        pattern.format(dataset=dataset, run=pipeline.ALL_SLICES, seed=seed)
        for dataset in EXPERIMENTS
        if PROTOCOL[dataset] in protocols and pipeline.trains_on_all(config, dataset)
        for seed in SEEDS
    ]


def submissions():
    """The ISBI test-volume submission stacks (a model trained on all slices), if asked for."""
    return all_slices_paths(
        "results/predictions/{dataset}/{run}/seed{seed}/submission.tif", ("isbi",)
    )


def exports():
    """The bioimage.io packages (`unet export`) of every model the run trains, unless `exports` is false."""
    if not config["exports"]:
        return []
    package = "results/exports/{dataset}/{run}/seed{seed}/model.bioimageio.zip"
    return run_paths(package) + all_slices_paths(package)


def ctc_submissions():
    """The CTC test sequences' result folders (both training sequences' models), if asked for."""
    if not config["ctc"]["predict_test"]:
        return []
    return [
        f"results/predictions/{dataset}-test/seed{seed}/{sequence}_RES"
        for dataset in EXPERIMENTS
        if PROTOCOL[dataset] == "ctc"
        and config["datasets"][dataset]["source"] != "synthetic"
        for seed in SEEDS
        for sequence in pipeline.CTC_SEQUENCES
    ]


def final_targets():
    return (
        expand("results/tables/table{n}.{ext}", n=(1, 2), ext=("csv", "md", "html"))
        + expand(
            "results/figures/{kind}-{dataset}.png",
            kind=("weightmap", "augment"),
            dataset=EXPERIMENTS,
        )
        + run_paths("results/models/{dataset}/{run}/seed{seed}/loss.png")
        + run_paths("results/figures/overlay-{dataset}-{run}-seed{seed}.png")
        + submissions()
        + ctc_submissions()
        + exports()
    )


def settings_note():
    """How the settings of this run differ from the paper's, for the tables."""
    return "; ".join(
        f"{d}: {pipeline.paper_deviations(config, d)}" for d in EXPERIMENTS
    )


def raw_data(dataset):
    """What `unet prepare` reads: the fetched or synthesised layout, or a folder data set's files where they are."""
    if PROTOCOL[dataset] == pipeline.FOLDER:
        return pipeline.folder_files(config["datasets"][dataset]["source"])
    return [f"results/raw/{dataset}"]


def raw_folder(dataset):
    """The folder `unet prepare --raw` takes."""
    if PROTOCOL[dataset] == pipeline.FOLDER:
        return config["datasets"][dataset]["source"]
    return f"results/raw/{dataset}"


def split_files(dataset, split):
    """The files of a prepared labelled split (`unet prepare`), which every later stage reads."""
    folder = f"results/data/{dataset}/{split}"
    return {name: f"{folder}/{name}.{ext}" for name, ext in SPLIT_FILES.items()}


SPLIT_FILES = {"images": "tif", "labels": "tif", "unannotated": "tif", "frames": "json"}


def training_inputs(dataset, split, held_out=None):
    """A labelled split and its weight maps (`unet weightmap`): what training reads; and the split whose
    labelled frames it scores as it goes (`held_out`, e.g. the other CTC sequence), if any.
    """
    folder = f"results/weights/{dataset}/{split}"
    inputs = split_files(dataset, split) | {
        "target": f"{folder}/target.tif",
        "weights": f"{folder}/weights.tif",
        "weight_record": f"{folder}/weightmap.json",
    }
    if held_out:
        inputs |= {
            f"held_out_{k}": v for k, v in split_files(dataset, held_out).items()
        }
    return inputs


def held_out_flags(wildcards):
    """How a training job holds frames out for its scores: ISBI folds by `--fold`, CTC runs by `--val-data`."""
    run = run_of(wildcards)
    if run.held_out:
        return f"--val-data results/data/{wildcards.dataset}/{run.held_out}"
    return run.fold_flags(FOLDS[wildcards.dataset])


def prediction_inputs(wildcards, split=None):
    """The model of the job's run and the prepared split it predicts (default: the run's)."""
    split = split or run_of(wildcards).predicts
    model = f"results/models/{wildcards.dataset}/{wildcards.run}/seed{wildcards.seed}/model.pt"
    folder = f"results/data/{wildcards.dataset}/{split}"
    return {
        "model": model,
        "images": f"{folder}/images.tif",
        "frames": f"{folder}/frames.json",
    }
