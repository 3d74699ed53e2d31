#!/usr/bin/env bash
# Snakemake runs this once in a newly created unet.yaml environment, from its working
# directory: it installs the unet package of this checkout there (editable, so the
# environment follows the code; without dependencies, unet.yaml brought them).
set -euo pipefail
if ! grep -qs '^name = "unet-reproduction"' pyproject.toml; then
    echo "envs/unet.post-deploy.sh: $PWD is not the unet checkout; run snakemake from the repository's root" >&2
    exit 1
fi
python -m pip install --no-deps --editable .
