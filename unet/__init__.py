"""Reference reproduction of U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

One module per pipeline stage, each usable without Snakemake and from the `unet` command:
`fetch`, `prepare`, `synthetic` (the embedded demo data), `weightmap`, `augment`, `train`,
`predict`, `evaluate`, `tables`, `export`; the workflow reaches them through `pipeline` and `settings`.
"""

from importlib import metadata

try:
    __version__ = metadata.version("unet-reproduction")
except metadata.PackageNotFoundError:  # run from a checkout that was not installed
    __version__ = "unknown"
