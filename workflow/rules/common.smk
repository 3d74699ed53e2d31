# Configuration checks, the experiments' runs and the final targets, shared by every rule file.
from snakemake.utils import min_version, update_config, validate

from unet.config import paper_deviations, stage_settings, typed_command_line_values

min_version("9.0")

# `--config model={depth: 3}` gives the string "3": read the command line's values as a
# config file would have, so that they pass the schema (and its bounds are what is checked).
update_config(config, typed_command_line_values(dict(workflow.config_settings.config)))

validate(config, "../schemas/config.schema.yaml")

_unknown = [name for name in config["experiments"] if name not in config["datasets"]]
if _unknown:
    raise ValueError(
        f"config: experiments {_unknown} are not keys of `datasets` "
        f"(known: {sorted(config['datasets'])})"
    )

EXPERIMENTS = list(config["experiments"])
DATASETS = list(config["datasets"])
SEEDS = list(config["seeds"])
FOLDS = config["isbi"]["folds"]
PROTOCOL = {name: spec["protocol"] for name, spec in config["datasets"].items()}


def one_of(names):
    """A regular expression (a wildcard constraint) matching exactly `names`; "(?!)" matches nothing."""
    return "|".join(map(re.escape, names)) or "(?!)"


# The data sets of each protocol, as wildcard constraints.
PROTOCOL_DATASETS = {
    protocol: one_of(n for n, p in PROTOCOL.items() if p == protocol)
    for protocol in ("isbi", "ctc")
}
# A CTC run is named after its training sequence and is tested on the other one.
OTHER_SEQUENCE = {"01": "02", "02": "01"}
# The split each data set's figures show: ISBI's training slices, the first CTC sequence.
FIGURE_SPLIT = {name: {"isbi": "train", "ctc": "01"}[p] for name, p in PROTOCOL.items()}


wildcard_constraints:
    dataset=one_of(DATASETS),
    seed=r"\d+",
    run=r"fold\d+|all|\d\d",


def settings(stage, dataset):
    return stage_settings(config, stage, dataset)


def scored_runs(dataset):
    """The runs whose predictions are scored: ISBI's folds, or both CTC directions."""
    if PROTOCOL[dataset] == "isbi":
        return [f"fold{k}" for k in range(FOLDS)]
    return list(OTHER_SEQUENCE)


def run_paths(pattern, datasets=EXPERIMENTS):
    """`pattern` for every scored run and seed of `datasets`."""
    return [
        pattern.format(dataset=dataset, run=run, seed=seed)
        for dataset in datasets
        for run in scored_runs(dataset)
        for seed in SEEDS
    ]


def submissions():
    """The ISBI test-volume submission stacks (a model trained on all slices), if asked for."""
    if not config["isbi"]["predict_test"]:
        return []
    return [
        f"results/predictions/{dataset}/all/seed{seed}/submission.tif"
        for dataset in EXPERIMENTS
        if PROTOCOL[dataset] == "isbi"
        for seed in SEEDS
    ]


def final_targets():
    return (
        expand("results/tables/table{n}.{ext}", n=(1, 2), ext=("csv", "md"))
        + expand(
            "results/figures/{kind}-{dataset}.png",
            kind=("weightmap", "augment"),
            dataset=EXPERIMENTS,
        )
        + run_paths("results/models/{dataset}/{run}/seed{seed}/loss.png")
        + run_paths("results/figures/overlay-{dataset}-{run}-seed{seed}.png")
        + submissions()
    )


def settings_note():
    """How the settings of this run differ from the paper's, for the tables."""
    return "; ".join(f"{d}: {paper_deviations(config, d)}" for d in EXPERIMENTS)
