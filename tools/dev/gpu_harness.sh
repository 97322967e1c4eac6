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
#                               then timings (BWD_BENCH_SEQLENS, default
#                               16384; BWD_BENCH_HDIMS, default 128)
# <folder>/bwd_check-<variant>  other backward builds: the same timings only
# Env: SANITIZE=1 memcheck/racecheck/synccheck on the small cases (of
#      SANITIZE_HARNESSES, default "fwd_check bwd_check"),
#      NCU=1 one Nsight Compute report per kernel (clocks as found;
#      NCU_KERNELS="fwd bwd" by default),
#      RUN_TIMEOUT seconds per run (default 240),
#      ONLY="fwd variants bwd bwd_variants sanitize ncu": the parts to run
#      (default: the first four, plus sanitize / ncu when their switch is set).
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

# Each run is killed after RUN_TIMEOUT seconds (a hung kernel must not eat
# the whole call); the SM clock is read after it (sustained-load clocks).
run() {  # name, command...
  local name=$1; shift
  local start=$SECONDS
  timeout -s KILL "${RUN_TIMEOUT:-240}" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $?, $((SECONDS - start)) s, SM clock after: $(nvidia-smi --query-gpu=clocks.sm --format=csv,noheader)"
}

ONLY=${ONLY:-"fwd variants bwd bwd_variants${SANITIZE:+ sanitize}${NCU:+ ncu}"}
want() { [[ " $ONLY " == *" $1 "* ]]; }

if want fwd && [ -x "$dir/fwd_check" ]; then
  run fwd_check "$dir/fwd_check" all
  grep -E "^(FAIL|SUMMARY)" "$OUT/fwd_check.log" | head -20
fi
for bin in "$dir"/fwd_check-*; do
  want variants && [ -x "$bin" ] || continue
  v=${bin##*/fwd_check-}
  BENCH_HDIMS=${VARIANT_BENCH_HDIMS:-128,64,256} run "bench-$v" "$bin" bench
done
if want bwd && [ -x "$dir/bwd_check" ]; then
  run bwd_check "$dir/bwd_check"
  grep -E "FAIL|failed" "$OUT/bwd_check.log" | head -20
  # SM clock and power every 200 ms while the timings run (sustained-load
  # clocks differ from the profiler's).
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -lms 200 > "$OUT/bwd_clocks.csv" &
  smi=$!
  BENCH_HDIMS=${BWD_BENCH_HDIMS:-128} run bwd_bench "$dir/bwd_check" bench ${BWD_BENCH_SEQLENS:-16384}
  kill $smi
fi
for bin in "$dir"/bwd_check-*; do
  want bwd_variants && [ -x "$bin" ] || continue
  BENCH_HDIMS=${BWD_BENCH_HDIMS:-128} run "bwd_bench-${bin##*/bwd_check-}" "$bin" bench ${BWD_BENCH_SEQLENS:-16384}
done
if want sanitize; then
  for tool in memcheck racecheck synccheck; do
    for h in ${SANITIZE_HARNESSES:-fwd_check bwd_check}; do
      [ -x "$dir/$h" ] || continue
      run "sanitize-$tool-$h" compute-sanitizer --tool "$tool" --error-exitcode 1 "$dir/$h" small
      tail -n 1 "$OUT/sanitize-$tool-$h.log"
    done
  done
fi
if want ncu; then
  # NCU_KERNELS: which of fwd / bwd to profile (one launch each, at 16k,
  # head dim 128); the backward's report also goes out as per-SASS-line
  # stall samples (bwd_check is built with -lineinfo).
  if [[ " ${NCU_KERNELS:-fwd bwd} " == *" fwd "* && -x "$dir/fwd_check" ]]; then
    BENCH_HDIMS=128 run ncu-fwd ncu --clock-control none --set full -k regex:fwd_kernel \
      --launch-skip 1 --launch-count 1 "$dir/fwd_check" bench16k
  fi
  if [[ " ${NCU_KERNELS:-fwd bwd} " == *" bwd "* && -x "$dir/bwd_check" ]]; then
    run ncu-bwd ncu --clock-control none --set full -k regex:bwd_main --launch-skip 1 --launch-count 1 \
      -o "$OUT/ncu-bwd" "$dir/bwd_check" bench
    ncu -i "$OUT/ncu-bwd.ncu-rep" --print-details all > "$OUT/ncu-bwd-details.log" 2>&1
    ncu -i "$OUT/ncu-bwd.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu-bwd-sass.csv" 2>&1
    # Every kernel of one whole backward (row terms, main, dq convert):
    # where the time outside the main kernel goes.
    run ncu-bwd-stages ncu --clock-control none --metrics gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second \
      -k regex:bwd_ --launch-skip 3 --launch-count 3 "$dir/bwd_check" bench
  fi
fi
# The short tables last (the device tool returns the end of the output).
for f in "$OUT"/bwd_bench*.log; do
  [ -f "$f" ] || continue
  echo "--- ${f##*/}"
  grep -E "^bench" "$f" | sed -E 's/^bench bf16 //; s/ \(min.*//'
done
for f in "$OUT"/fwd_check.log "$OUT"/bench-*.log; do
  [ -f "$f" ] || continue
  echo "--- ${f##*/}"
  grep -E "^BENCH" "$f" | awk '{print $2, $3, $4, $7, $8, $14, $NF}'
done
