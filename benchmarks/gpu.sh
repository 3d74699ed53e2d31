#!/usr/bin/env bash
# The GPU measurements, as run on a lent GPU machine that has PyTorch but no network:
#
#   benchmarks/gpu.sh bench        # training, augmentation and prediction benchmarks (--record)
#   benchmarks/gpu.sh reproduce [CONFIG]  # the paper-profile DAG on ISBI 2012 and DIC-HeLa
#
# It expects, beside the checkout (both git-ignored): .whl/ with the wheels of snakemake and
# what it needs that the machine lacks, and .devdata/mirror.tar.xz, the real data laid out like
# ../shared/data with the TIFFs stored uncompressed (the machine has no imagecodecs).
# Results go to $OUT (benchmarks/results/*.md, or results.tar.gz of the run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
printf '#!/bin/sh\nexec python3 -m unet.cli "$@"\n' > /tmp/site/bin/unet && chmod +x /tmp/site/bin/unet
mkdir -p /tmp/mirror && tar -xJf .devdata/mirror.tar.xz -C /tmp/mirror || exit 1
export UNET_SHARED_DATA=/tmp/mirror/data
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

case "${1:-bench}" in
bench)
    python3 benchmarks/bench_train.py --device cuda --precision bf16 --channels-last --record
    python3 benchmarks/bench_train.py --device cuda --precision bf16 --channels-last --compile --record
    python3 benchmarks/bench_augment.py --device cuda --record
    python3 benchmarks/bench_predict.py --device cuda --record
    cp benchmarks/results/*.md "$OUT"/
    ;;
reproduce)
    start=$(date +%s)
    # CONFIG (default: the paper profile) may shorten the schedule to fit the machine's time slot.
    timeout "${REPRODUCE_SECONDS:-500}" snakemake --configfile "${2:-config/config.yaml}" \
        --config mirror=/tmp/mirror/data experiments="[isbi2012,DIC-C2DH-HeLa]" \
        --cores 16 --scheduler greedy -q 2>&1 | tail -40
    echo "reproduction: $(( $(date +%s) - start )) s"
    cat results/tables/table1.md results/tables/table2.md results/tables/rule_times.csv
    tar -czf "$OUT/results.tar.gz" results/tables results/scores results/figures results/logs \
        results/benchmarks results/models/*/*/*/log.csv results/models/*/*/*/loss.png
    ;;
esac
