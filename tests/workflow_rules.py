"""The parsed rules of a Snakemake workflow, for the tests that check them (style, SLURM resources)."""

from __future__ import annotations

from pathlib import Path


def workflow_rules(snakefile: Path, configfile: Path | None = None) -> list:
    """The parsed rules of a workflow, each with `is_local`: declared in `localrules`."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    configfiles = [configfile] if configfile else []
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=configfiles),
            storage_settings=StorageSettings(),
            snakefile=snakefile,
        )
        # The API has no public accessor for the parsed rules and the declared localrules.
        workflow = workflow_api._workflow
        rules = list(workflow.rules)
        for rule in rules:
            rule.is_local = rule.name in workflow._localrules
    return rules
