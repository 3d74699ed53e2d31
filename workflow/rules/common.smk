from snakemake.utils import min_version, validate

from unet.config import stage_settings

min_version("9.0")


validate(config, "../schemas/config.schema.yaml")

_unknown = [name for name in config["experiments"] if name not in config["datasets"]]
if _unknown:
    raise ValueError(
        f"config: experiments {_unknown} are not keys of `datasets` "
        f"(known: {sorted(config['datasets'])})"
    )

EXPERIMENTS = list(config["experiments"])
DATASETS = list(config["datasets"])


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    seed=r"\d+",


def settings(stage, dataset):
    return stage_settings(config, stage, dataset)
