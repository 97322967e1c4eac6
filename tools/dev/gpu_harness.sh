#!/usr/bin/env bash
# One device call for kernel work: runs the prebuilt dev harnesses (built here
# by tools/dev/build_carry.sh, carried in a folder) and compute-sanitizer,
# logging under $OUT; the short tables come last.
#
#   bash tools/dev/gpu_harness.sh <folder>        (e.g. .carry)
#
# <folder>/fwd_check            the library's forward: coverage cases (float64
#                               reference, poisoned outputs) + the FA3 grid
# <folder>/fwd_check-<variant>  other forward builds (the previous kernel,
#                               ablations): grid timings only, head dims
#                               VARIANT_BENCH_HDIMS (default 128,64,256)
# <folder>/bwd_check            the backward: coverage (fast + deterministic),
#                               then timings at 16k, head dim 128
# Env: SANITIZE=1 memcheck/racecheck/synccheck on the small cases,
#      NCU=1 one Nsight Compute report per kernel (clocks as found).
set -uo pipefail
dir=${1:?binaries folder}
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  echo "revision: $(cat "$dir/revision" 2>/dev/null || echo unknown)"
} | tee "$OUT/env.txt"

run() {  # name, command...
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $?, $((SECONDS - start)) s"
}

if [ -x "$dir/fwd_check" ]; then
  run fwd_check "$dir/fwd_check" all
  grep -E "^(FAIL|SUMMARY)" "$OUT/fwd_check.log" | head -20
fi
for bin in "$dir"/fwd_check-*; do
  [ -x "$bin" ] || continue
  v=${bin##*/fwd_check-}
  BENCH_HDIMS=${VARIANT_BENCH_HDIMS:-128,64,256} run "bench-$v" "$bin" bench
done
if [ -x "$dir/bwd_check" ]; then
  run bwd_check "$dir/bwd_check"
  grep -E "FAIL|failed" "$OUT/bwd_check.log" | head -20
  run bwd_bench "$dir/bwd_check" bench
fi
if [ -n "${SANITIZE:-}" ]; then
  for tool in memcheck racecheck synccheck; do
    for h in fwd_check bwd_check; do
      [ -x "$dir/$h" ] || continue
      run "sanitize-$tool-$h" compute-sanitizer --tool "$tool" --error-exitcode 1 "$dir/$h" small
      tail -n 1 "$OUT/sanitize-$tool-$h.log"
    done
  done
fi
if [ -n "${NCU:-}" ]; then
  [ -x "$dir/fwd_check" ] && BENCH_HDIMS=128 run ncu-fwd ncu --clock-control none --set full -k regex:fwd_kernel \
    --launch-skip 1 --launch-count 1 "$dir/fwd_check" bench16k
  [ -x "$dir/bwd_check" ] && run ncu-bwd ncu --clock-control none --set full -k regex:bwd_main --launch-skip 1 \
    --launch-count 1 "$dir/bwd_check" bench
fi
# The short tables last (the device tool returns the end of the output).
[ -f "$OUT/bwd_bench.log" ] && grep -E "^bench" "$OUT/bwd_bench.log"
for f in "$OUT"/fwd_check.log "$OUT"/bench-*.log; do
  [ -f "$f" ] || continue
  echo "--- ${f##*/}"
  grep -E "^BENCH" "$f" | awk '{print $2, $3, $4, $7, $8, $14, $NF}'
done
