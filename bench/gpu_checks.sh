#!/usr/bin/env bash
# The GPU checks of issue 7 in one call, for a GPU host lent for a few minutes (bench/RESULTS.md).
#
#     bench/gpu_checks.sh OUTDIR [quick]
#
# Runs the CUDA tests, then the JPEG lane's stage timings, the multi-process benchmark (today's lane
# against earlier ones) and the throughput one (JPEG lane), each writing its JSON and log to OUTDIR; "quick" stops after the stage
# timings. A host with PyTorch but not the project's other dependencies: put wheels of the missing
# ones in .whl/ and they are installed into a private folder first (no index is asked). Each step's
# failure is logged and the next step still runs, so one broken step does not waste the machine.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bench/gpu_checks.sh OUTDIR [quick]}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log it, note how it ended
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$out/steps.log"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $?, $((SECONDS - start)) s" | tee -a "$out/steps.log"
}

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/gpu-site:$PWD"
fi
nvidia-smi -L >>"$out/steps.log" 2>&1  # files back from a lent GPU are few: the logs and JSONs only
# --noconftest: the shared fixtures start a Prefect server, which these tests do not need.
step tests 120 python3 -m pytest -q -p no:cacheprovider --noconftest tests/test_gpu.py tests/test_jpeg_lane.py
step lane_stages 90 python3 bench/lane_stages.py --device cuda --batch-size 64 --batches 5 \
    --json "$out/lane_stages.json"
if [ "${2:-}" != "quick" ]; then
    # Today's lane against the lane as it was (bench/processes.py --variants), side by side.
    step processes 240 python3 bench/processes.py --device cuda --n 4000 --processes 1,4 --batch-size 64 \
        --variants current,nvjpeg-alone --json "$out/processes_cuda.json"
    step throughput 150 python3 bench/throughput.py --device cuda --n 2000 --batch-size 64 --seed-n 20 \
        --tiff-every 0 --json "$out/throughput_cuda_jpeg.json"
fi
