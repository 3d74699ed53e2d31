"""Reference reproduction of U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

One module per pipeline stage, each usable without Snakemake and from the `unet` command:
`data` (download, verify, prepare), `synthetic` (the embedded demo data),
`weightmap`, `augment`, `model`, `train`, `predict`, `metrics`, `evaluate`, `tables`.
"""

__version__ = "0.1.0"
