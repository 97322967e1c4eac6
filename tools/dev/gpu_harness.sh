#!/usr/bin/env bash
# One device call for the forward kernel work: runs prebuilt forward harness
# binaries (tools/dev/build_fwd_check.sh, carried in a folder) and compute-
# sanitizer, logging under $OUT.
#
#   bash tools/dev/gpu_fwd_harness.sh <dir with fwd_check[-variant] binaries>
#
# <dir>/fwd_check            the library's kernels: coverage cases + benchmark grid
# <dir>/fwd_check-<variant>  other builds (baseline, ablations): benchmark only,
#                            narrowed by VARIANT_BENCH_HDIMS (default 128)
set -uo pipefail
dir=${1:?binaries folder}
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  echo "revision: $(cat .revision 2>/dev/null || echo unknown)"
} | tee "$OUT/env.txt"

run() {  # name, command...
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $?, $((SECONDS - start)) s"
}

run fwd_check "$dir/fwd_check" all
grep -E "^(FAIL|SUMMARY)" "$OUT/fwd_check.log" | head -20
for bin in "$dir"/fwd_check-*; do
  [ -x "$bin" ] || continue
  v=${bin##*/fwd_check-}
  BENCH_HDIMS=${VARIANT_BENCH_HDIMS:-128} run "bench-$v" "$bin" bench
done
if [ -n "${SANITIZE:-}" ]; then
  for tool in memcheck racecheck synccheck; do
    run "sanitize-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 "$dir/fwd_check" small
    tail -n 2 "$OUT/sanitize-$tool.log"
  done
fi
if [ -n "${NCU:-}" ]; then
  # One launch each, counters on the clocks as found (never locked).
  BENCH_HDIMS=128 run ncu-fwd ncu --clock-control none --set full -k regex:fwd_kernel --launch-skip 1 --launch-count 1 \
    "$dir/fwd_check" bench16k
  [ -x "$dir/bwd_check" ] && run ncu-bwd ncu --clock-control none --set full -k regex:bwd_main --launch-skip 1 \
    --launch-count 1 "$dir/bwd_check" bench
fi
[ -x "$dir/bwd_check" ] && run bwd_bench "$dir/bwd_check" bench && tail -n 4 "$OUT/bwd_bench.log"
# The short table last (the device tool returns the end of the output).
for f in "$OUT"/fwd_check.log "$OUT"/bench-*.log; do
  echo "--- ${f##*/}"
  grep -E "^BENCH" "$f" | awk '{print $2, $3, $4, $7, $8, $14, $NF}'
done
