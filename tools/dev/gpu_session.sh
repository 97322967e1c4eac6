#!/usr/bin/env bash
# One device call that does a whole session's GPU work (the machine is bare
# and each call pays its start-up): the prebuilt kernel harnesses, then the
# library's GPU tests and the benchmark against cuDNN, with outputs packed
# into few files (the device tool returns at most 8).
#
#   bash tools/dev/gpu_session.sh <carry folder>
#
# <carry>/fwd_check*, bwd_check   harnesses (tools/dev/build_carry.sh)
# <carry>/wheel/*.whl             jax_fa3 for the device's Python
# Env: HARNESS (default "fwd variants bwd ncu"), STEPS (gpu_check.sh's steps
#      with the wheel, default "build tests bench"), RUN_TIMEOUT, TESTS_TIMEOUT,
#      BENCH_TIMEOUT, BENCH_ARGS, VARIANT_BENCH_HDIMS (see the scripts called).
set -uo pipefail
carry=${1:?carry folder}
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT/harness"
# (The harnesses are prebuilt; gpu_check.sh installs the carried wheels the
# library needs.)
OUT="$OUT/harness" ONLY="${HARNESS:-fwd variants bwd ncu}" bash tools/dev/gpu_harness.sh "$carry"

wheel=$(ls "$carry"/wheel/*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ]; then
  echo "wheel: $wheel"
  JAX_FA3_WHEEL="$wheel" PYTEST_WORKERS=${PYTEST_WORKERS:-8} TAIL_LINES=${TAIL_LINES:-6} \
    BENCH_ARGS="${BENCH_ARGS:-} --revision $(cut -d' ' -f1 "$carry/revision" 2>/dev/null || echo unknown)" \
    bash tools/gpu_check.sh "${STEPS:-build tests bench}"
fi
# Few files back: the tables as they are, everything else in one archive.
cd "$OUT" && rm -f harness/*.ncu-rep && tar czf logs.tgz --remove-files harness $(ls env.txt build.log bench.log bench.json 2>/dev/null)
ls -la "$OUT"
