#!/usr/bin/env bash
# The GPU measurements, as run on a lent GPU machine that has PyTorch but no network:
#
#   UNET_COMMIT=<commit> benchmarks/gpu.sh bench       # training, augmentation and prediction benchmarks (--record)
#   UNET_COMMIT=<commit> benchmarks/gpu.sh reproduce [CONFIG]   # the paper-profile DAG on ISBI 2012 and DIC-HeLa
#   benchmarks/gpu.sh selftest    # every step of both on the CPU with tiny settings (tests/test_gpu_script.py)
#
# UNET_COMMIT names the code that ran (unet/provenance.py): the copy on the device has no .git. Set it where
# the copy is made: UNET_COMMIT=$(git rev-parse HEAD)$(git diff --quiet HEAD || echo +dirty).
# What a mode reads beside the checkout (git-ignored; other places through $WHEELS and $DATA_ARCHIVE):
# - .whl/: wheels the machine lacks, installed into $WORK/site. `reproduce` needs snakemake's; `bench`
#   installs what is there, e.g. elasticdeform, the baseline of bench_augment.
# - .devdata/mirror.tar.xz: the real data laid out like ../shared/data, TIFFs uncompressed (the machine has
#   no imagecodecs). `reproduce` extracts all of it, `bench` only ISBI 2012 (for bench_augment).
# Each benchmark runs under its own time limit, the slow --compile run last, and its results file goes to
# $OUT as soon as it is written: a run cut short still returns what it measured. `reproduce` leaves out the
# bioimage.io exports (`exports=false`): they need bioimageio.spec and pydantic, which the machine lacks,
# and are CPU work that measures nothing. The exit status is 1 if a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
MODE=${1:-bench}
OUT=${OUT:-/tmp/out}
WORK=${WORK:-/tmp/unet-gpu}
WHEELS=${WHEELS:-.whl}
DATA_ARCHIVE=${DATA_ARCHIVE:-.devdata/mirror.tar.xz}
RESULTS=benchmarks/results
mkdir -p "$OUT" "$WORK"
failed=()

say() { echo "gpu.sh: $*" >&2; }

install_wheels() { # [required]: the wheels of $WHEELS into $WORK/site
    local wheels=("$WHEELS"/*.whl)
    if [ ! -e "${wheels[0]}" ]; then
        [ "${1:-}" = required ] && say "no wheels in $WHEELS: $MODE needs snakemake's" && exit 1
        return 0
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "${wheels[@]}" || exit 1
    export PYTHONPATH=$WORK/site:$PYTHONPATH PATH=$WORK/site/bin:$PATH
}

extract_data() { # [MEMBER...]: the data archive (these members of it) into $WORK/mirror; 1 without the archive
    [ -f "$DATA_ARCHIVE" ] || return 1
    mkdir -p "$WORK/mirror" && tar -xJf "$DATA_ARCHIVE" -C "$WORK/mirror" "$@" || exit 1
    export UNET_SHARED_DATA=$WORK/mirror/data
}

require_cuda() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import sys, torch
cuda = torch.cuda.is_available()
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name() if cuda else 'unavailable')
sys.exit(not cuda)" || {
        say "CUDA is not available: stopping"
        exit 1
    }
}

benchmark() { # SECONDS STAGE ARGS...: benchmarks/bench_STAGE.py under a time limit; its results file to $OUT
    local seconds=$1 stage=$2
    shift 2
    say "bench_$stage $* (at most $seconds s)"
    timeout "$seconds" python3 "benchmarks/bench_$stage.py" "$@" || failed+=("bench_$stage $*")
    if [ -f "$RESULTS/$stage.md" ]; then cp "$RESULTS/$stage.md" "$OUT/"; fi
}

augment_benchmark() { # SECONDS ARGS...: bench_augment, if its data and its baseline are here
    if ! extract_data data/isbi2012; then
        say "bench_augment skipped: no $DATA_ARCHIVE"
    elif ! python3 -c "import elasticdeform" 2>/dev/null; then
        say "bench_augment skipped: elasticdeform (its baseline) is not installed; put its wheel in $WHEELS"
    else
        benchmark "$1" augment "${@:2}"
    fi
}

reproduce() { # SECONDS CONFIG SNAKEMAKE_ARGS...: the DAG on the real data, without the exports
    local seconds=$1 config=$2
    shift 2
    mkdir -p "$WORK/bin"
    printf '#!/bin/sh\nexec python3 -m unet.cli "$@"\n' >"$WORK/bin/unet" && chmod +x "$WORK/bin/unet"
    export PATH=$WORK/bin:$PATH
    extract_data || {
        say "no $DATA_ARCHIVE: reproduce needs the data"
        exit 1
    }
    local start=$SECONDS
    timeout "$seconds" python3 -m snakemake --configfile "$config" \
        --config mirror="$WORK/mirror/data" experiments="[isbi2012,DIC-C2DH-HeLa]" exports=false \
        --cores 16 --scheduler greedy "$@" 2>&1 | tail -60
    [ "${PIPESTATUS[0]}" = 0 ] || failed+=("snakemake")
    say "reproduction: $((SECONDS - start)) s"
    local file
    for file in results/tables/table1.md results/tables/table2.md results/tables/rule_times.csv; do
        if [ -f "$file" ]; then cat "$file"; fi
    done
    pack_results
}

pack_results() { # what the run produced, as $OUT/results.tar.gz
    local found=() path
    for path in results/tables results/scores results/figures results/logs results/benchmarks \
        results/models/*/*/*/log.csv results/models/*/*/*/loss.png; do
        if [ -e "$path" ]; then found+=("$path"); fi
    done
    if ((${#found[@]})); then
        tar -czf "$OUT/results.tar.gz" "${found[@]}" || failed+=("packing the results")
    else
        say "no results to pack"
    fi
}

case "$MODE" in
bench)
    install_wheels
    require_cuda
    benchmark 120 train --device cuda --record  # fp32 and bf16, contiguous and channels_last
    augment_benchmark 60 --device cuda --record
    benchmark 120 predict --device cuda --record
    benchmark 240 train --device cuda --precisions bf16 --layouts channels_last --compile --record
    ;;
reproduce)
    install_wheels required
    require_cuda
    # CONFIG (default: the paper profile) may shorten the schedule to fit the machine's time slot.
    reproduce "${REPRODUCE_SECONDS:-500}" "${2:-config/config.yaml}" -q
    ;;
selftest)
    # Both modes on the CPU, tiny: the benchmarks record into a scratch copy of their results, the compile
    # run runs eagerly (inductor would take minutes here) and the DAG is a dry run.
    install_wheels
    python3 -c "import torch; print('torch', torch.__version__, 'selftest on the CPU')"
    mkdir -p "$WORK/results"
    RESULTS=$WORK/results
    export UNET_BENCHMARK_RESULTS=$RESULTS
    tiny_train=(--device cpu --widths 2 --depth 2 --input-size 44 --steps 1 --repeats 1 --matmul-size 64 --record)
    benchmark 120 train "${tiny_train[@]}"
    augment_benchmark 120 --samples 1 --repeats 1 --record
    benchmark 120 predict --device cpu --base-channels 2 --input-size 572 --tta none --slices 1 --repeats 1 --record
    TORCH_COMPILE_DISABLE=1 benchmark 120 train "${tiny_train[@]}" --compile
    reproduce 300 config/config.yaml --dry-run
    ;;
*)
    say "unknown mode $MODE: bench, reproduce [CONFIG] or selftest"
    exit 2
    ;;
esac
if ((${#failed[@]})); then
    say "failed: ${failed[*]}"
    exit 1
fi
say "done; results in $OUT"
